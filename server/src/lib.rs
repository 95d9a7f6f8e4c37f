//! The ChainQL node and its front ends: admission, block production and the committed state
//! ([`Node`]), the gRPC API ([`grpc`]), account sessions ([`Session`]) and the psql-style shell
//! ([`Shell`]). The `chainql` binary wires them to the command line.
//!
//! ```no_run
//! # async fn example() -> chainql_server::Result<()> {
//! use chainql::Keypair;
//! use chainql_server::{Connection, Node, NodeConfig, Outcome, Session, init_data_dir};
//!
//! let config = NodeConfig::new("./chainql-data");
//! let key = Keypair::generate();
//! init_data_dir(&config, "chainql-local", &[(key.address(), 1_000)])?;
//! let node = Node::open(config).await?;
//! let mut session = Session::new(Connection::Embedded(node.clone()), key).await?;
//! session.run("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT)").await?;
//! session.run("INSERT INTO t VALUES (1, 'one')").await?;
//! let Outcome::Rows(rows) = session.run("SELECT * FROM t").await? else { unreachable!() };
//! assert_eq!(rows.row_count(), 1);
//! node.shutdown().await;
//! # Ok(()) }
//! ```

pub mod bench;
pub mod bench_network;
mod checkpoints;
pub mod client;
mod completion;
pub mod config_file;
pub mod devnet;
mod error;
pub mod format;
pub mod grpc;
pub mod metrics;
pub mod mirror;
mod node;
pub mod pg;
pub mod progress;
mod session;
mod shell;
pub mod validator;

pub use client::{Client, SubscribeOptions};
pub use error::{Error, Result};
pub use node::{
    Node, NodeConfig, NodeStatus, QUERY_BYTES_MAX, Recovery, check_query_size, init_data_dir,
    load_or_create_key,
};
pub use session::{Connection, Outcome, Session};
pub use shell::{Shell, receipt_text};
