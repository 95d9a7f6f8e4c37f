//! Public-behaviour tests of the node, in one test binary (linking DataFusion dominates build
//! time, so the modules share it).

mod admission;
mod bench;
mod blocks;
mod certificates;
mod config;
mod devnet;
mod evidence;
mod grpc;
mod history;
mod mirror;
mod pg;
mod pg_clients;
mod python;
mod r2;
mod restart;
mod shell;
mod staking;
mod support;
mod validator_input;
