//! `chainql`: the ChainQL command-line tool — shell, node, keys, bench.

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use chainql::{Address, Keypair};
use chainql_server::bench::{BenchConfig, run_bench};
use chainql_server::{
    Client, Connection, Error, Node, NodeConfig, Result, Session, Shell, config_file, grpc, init_data_dir,
    load_or_create_key, pg,
};

/// mimalloc: block execution allocates and frees many small objects on several threads, where
/// glibc's allocator spent about a fifth of the time (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_DATA_DIR: &str = "chainql-data";
const DEFAULT_CHAIN_ID: &str = "chainql-local";
/// The balance the embedded shell's own account starts with on a new chain.
const SHELL_ACCOUNT_BALANCE: u64 = 1_000_000_000;

#[derive(Parser)]
#[command(
    name = "chainql",
    version,
    about = "ChainQL: a replicated, verifiable SQL ledger"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a psql-style shell on an embedded node (or, with --connect, on a running one).
    Shell(ShellArgs),
    /// Run a node serving the gRPC API.
    Node(NodeArgs),
    /// Create a data directory: a validator key and a genesis.
    Init(InitArgs),
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Measure end-to-end throughput on a fresh embedded node.
    Bench(BenchArgs),
    /// Run Tendermint between simulated validators over many seeds, with network faults,
    /// crashes and Byzantine validators, and check that they never disagree and keep
    /// committing (deterministic: a seed replays exactly).
    Simulate(SimulateArgs),
    /// Check committed data on its own, with only the chain's genesis.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Run a local network of validators, one `chainql node` process each, on loopback ports.
    Devnet(DevnetArgs),
    /// Work with a node's Proof-of-Events log.
    #[command(subcommand)]
    Log(LogCommand),
}

#[derive(Subcommand)]
enum LogCommand {
    /// Keep a replica of a node's log in a directory: every partition's entries (same sequence
    /// numbers and epochs), snapshot markers and rollbacks, read through `SubscribeLog`. A run
    /// resumes where the directory's log ends, and reconnects when the node goes away.
    Mirror(MirrorArgs),
}

#[derive(Args)]
struct MirrorArgs {
    /// The node to mirror (e.g. http://127.0.0.1:50051).
    #[arg(long)]
    connect: String,
    /// Where the replica lives (created on the first run).
    #[arg(long, default_value = "chainql-log-mirror")]
    dir: PathBuf,
    /// Stop once the replica holds what the node had committed when the run started.
    #[arg(long, conflicts_with = "until_height")]
    until_committed: bool,
    /// Stop once the replica holds every partition up to the block at this height.
    #[arg(long)]
    until_height: Option<u64>,
}

#[derive(Args)]
struct DevnetArgs {
    /// Validators, each with an equal stake.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Where the validators' data directories, genesis and logs go (created on first run,
    /// reused after).
    #[arg(long, default_value = "chainql-devnet")]
    dir: PathBuf,
    /// Validator i serves gRPC on BASE+i, PostgreSQL on BASE+100+i and metrics on BASE+200+i.
    #[arg(long, default_value_t = 26_650)]
    base_port: u16,
    #[arg(long, default_value = "devnet")]
    chain_id: String,
    /// More nodes that start outside the validator set, with a balance: they follow the chain
    /// and join the set with `STAKE n`.
    #[arg(long, default_value_t = 0)]
    followers: usize,
    /// Blocks per staking epoch: stake and the validator set change only at its end.
    #[arg(long, default_value_t = chainql_consensus::DEFAULT_EPOCH_BLOCKS)]
    epoch_blocks: u64,
    /// Write the keys, genesis and node.toml files, and start nothing.
    #[arg(long)]
    write_only: bool,
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Check block N: its link to block N-1, its transactions against its header, its
    /// proposer's signature, and its commit certificate (precommits of more than 2/3 of the
    /// stake). Prints who signed it; exits with failure if anything does not hold.
    Block(VerifyBlockArgs),
}

#[derive(Args)]
struct VerifyBlockArgs {
    /// The height of the block.
    height: u64,
    /// Read the blocks from a running node (e.g. http://127.0.0.1:50051) instead of a data
    /// directory.
    #[arg(long)]
    connect: Option<String>,
    /// The data directory whose block store to read (read-only; the node may be running).
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "CHAINQL_DATA_DIR")]
    data_dir: PathBuf,
    /// The chain's genesis file, whose validators must have committed the block
    /// [default: DATA_DIR/genesis.json].
    #[arg(long)]
    genesis: Option<PathBuf>,
}

#[derive(Args)]
struct SimulateArgs {
    /// Seeds to run: the first, then one more each run.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Blocks every validator must commit in each run.
    #[arg(long, default_value_t = 10)]
    heights: u64,
    /// Messages lost, per thousand.
    #[arg(long, default_value_t = 100)]
    drop_per_mille: u64,
    /// Messages delivered twice, per thousand.
    #[arg(long, default_value_t = 50)]
    duplicate_per_mille: u64,
    /// Longest message delay, in milliseconds of virtual time.
    #[arg(long, default_value_t = 120)]
    max_delay_ms: u64,
    /// Crash and restart every validator once in each run, at a seed-dependent time.
    #[arg(long)]
    crashes: bool,
    /// Cut one validator (a seed-dependent one) off the others for two seconds in each run,
    /// then heal the network.
    #[arg(long)]
    partitions: bool,
    /// How many validators (the last ones) equivocate on every vote.
    #[arg(long, default_value_t = 0)]
    equivocators: usize,
    /// How many validators (the first ones) propose invalid blocks.
    #[arg(long, default_value_t = 0)]
    invalid_proposers: usize,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new ed25519 key (mode 0600) and print its address.
    New {
        /// Where to write the key.
        #[arg(long, default_value = "chainql-data/keys/default.key")]
        out: PathBuf,
    },
    /// Print the address of a key.
    Address {
        #[arg(long, default_value = "chainql-data/keys/default.key")]
        key: PathBuf,
    },
}

#[derive(Args)]
struct NodeOptions {
    /// The node's data directory.
    #[arg(long, default_value = DEFAULT_DATA_DIR, env = "CHAINQL_DATA_DIR")]
    data_dir: PathBuf,
    /// The shortest time between two blocks, in milliseconds.
    #[arg(long, default_value_t = 10)]
    block_interval_ms: u64,
    /// The most transactions in one block.
    #[arg(long, default_value_t = 5_000)]
    block_transactions_max: usize,
    /// The largest query answer, in rows.
    #[arg(long, default_value_t = 1_000_000)]
    query_rows_max: usize,
    /// Log partitions of a chain created by this command (fixed at genesis).
    #[arg(long, default_value_t = 4)]
    log_partitions: u32,
    /// The longest a log partition collects appends into one group commit, in milliseconds.
    #[arg(long, default_value_t = 5)]
    log_group_commit_wait_ms: u64,
    /// Recent log entries kept in memory per partition, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    log_tail_bytes_max: usize,
    /// Committed versions kept in memory for `AS OF BLOCK n` queries; older ones are rebuilt
    /// from the stored blocks when asked for.
    #[arg(long, default_value_t = 128)]
    snapshots_kept: u64,
    /// A checkpoint of the state is written every this many blocks (0: never); a restart loads
    /// the newest and re-executes only the blocks after it.
    #[arg(long, default_value_t = 1_000)]
    checkpoint_interval: u64,
    /// Checkpoints kept on disk.
    #[arg(long, default_value_t = 2)]
    checkpoints_kept: usize,
    /// Delete log segments wholly below the newest checkpoint (a `SubscribeLog` reader can then
    /// start no earlier than the checkpoint).
    #[arg(long)]
    log_retention: bool,
    /// The gRPC address of another validator of the chain, e.g. http://127.0.0.1:50052
    /// (repeatable): consensus messages and admitted transactions go to each, and blocks this
    /// node missed come from them.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

impl NodeOptions {
    fn config(&self) -> NodeConfig {
        let mut config = NodeConfig::new(&self.data_dir);
        config.block_interval_ms = self.block_interval_ms;
        config.block_transactions_max = self.block_transactions_max;
        config.query_limits.rows_max = self.query_rows_max;
        config.log_partitions = self.log_partitions;
        config.log_group_commit_wait_ms = self.log_group_commit_wait_ms;
        config.log_tail_bytes_max = self.log_tail_bytes_max;
        config.snapshots_kept = self.snapshots_kept;
        config.checkpoint_interval = self.checkpoint_interval;
        config.checkpoints_kept = self.checkpoints_kept;
        config.log_retention = self.log_retention;
        config.peers = self.peers.clone();
        config
    }
}

#[derive(Args)]
struct ShellArgs {
    #[command(flatten)]
    node: NodeOptions,
    /// Talk to a running node (e.g. http://127.0.0.1:50051) instead of an embedded one.
    #[arg(long)]
    connect: Option<String>,
    /// The key that signs this session's transactions [default: DATA_DIR/keys/default.key].
    #[arg(long)]
    key: Option<PathBuf>,
    /// Run this command (statements or a backslash command) and exit.
    #[arg(short = 'c', long = "command")]
    command: Option<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

#[derive(Args)]
struct NodeArgs {
    /// A node.toml with any of these settings, under their flag names (a flag given here wins).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    node: NodeOptions,
    /// Where the gRPC API listens.
    #[arg(long, default_value = "127.0.0.1:50051")]
    grpc_listen: SocketAddr,
    /// Where the PostgreSQL wire protocol listens (psql, pgbench, drivers).
    #[arg(long, default_value = "127.0.0.1:5433")]
    pg_listen: SocketAddr,
    /// Do not serve the PostgreSQL wire protocol.
    #[arg(long)]
    no_pg: bool,
    /// Where Prometheus scrapes `/metrics` (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_listen: SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Create a key in DATA_DIR/keys the first time a PostgreSQL user name connects, rather
    /// than refuse the connection (development only: anyone who can connect can then act as
    /// any user name).
    #[arg(long)]
    pg_create_keys: bool,
    /// Create the data directory first if it does not exist, with this chain id.
    #[arg(long)]
    init_chain_id: Option<String>,
}

#[derive(Args)]
struct InitArgs {
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Partitions of the Proof-of-Events log, fixed for the life of the chain.
    #[arg(long, default_value_t = 4)]
    log_partitions: u32,
    #[arg(long, default_value = DEFAULT_CHAIN_ID)]
    chain_id: String,
    /// Native units a transaction pays the proposer per unit of gas used (0: gas is free).
    #[arg(long, default_value_t = 0)]
    gas_price: u64,
    /// Blocks per staking epoch: stake and the validator set change only at its end.
    #[arg(long, default_value_t = chainql_consensus::DEFAULT_EPOCH_BLOCKS)]
    epoch_blocks: u64,
    /// An opening balance, ADDRESS=AMOUNT (repeatable).
    #[arg(long = "account")]
    accounts: Vec<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// What each transaction does: `update` (one UPDATE by key) or `transfer` (a token
    /// contract's CALL).
    #[arg(long, default_value = "update")]
    workload: chainql_server::bench::Workload,
    /// Signed transactions to commit.
    #[arg(long, default_value_t = 20_000)]
    transactions: usize,
    /// Concurrent clients, each with its own key.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Rows in the updated table (`update`), or holders besides the clients that transfers go
    /// to (`transfer`).
    #[arg(long, default_value_t = 10_000)]
    rows: usize,
    #[arg(long, default_value_t = 10)]
    block_interval_ms: u64,
    #[arg(long, default_value_t = 5_000)]
    block_transactions_max: usize,
    /// Transactions per submission request (more than 1 uses batch admission).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Log partitions of the bench chain.
    #[arg(long, default_value_t = 4)]
    log_partitions: u32,
    /// Where the bench node keeps its data [default: a new temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run a network of this many validator processes on this machine and send the
    /// transactions over gRPC, measuring submit-to-commit latency too (the chain then has 4
    /// log partitions, and `--batch` does not apply).
    #[arg(long)]
    validators: Option<usize>,
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a collector gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
}

fn main() -> ExitCode {
    chainql_executor::configure_allocator();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let result = match cli.command {
        Command::Shell(args) => shell(args),
        Command::Node(args) => match matches.subcommand_matches("node") {
            Some(flags) => with_config_file(args, flags).and_then(node),
            None => node(args),
        },
        Command::Init(args) => init(args),
        Command::Keys(command) => keys(command),
        Command::Bench(args) => bench(args),
        Command::Simulate(args) => simulate(args),
        Command::Verify(VerifyCommand::Block(args)) => verify_block(args),
        Command::Devnet(args) => devnet(args),
        Command::Log(LogCommand::Mirror(args)) => mirror(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn keys(command: KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::New { out } => {
            let key = Keypair::generate();
            key.write_file(&out)?;
            println!("{}", key.address());
            eprintln!("wrote {}", out.display());
        }
        KeysCommand::Address { key } => println!("{}", Keypair::read_file(&key)?.address()),
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_accounts(accounts: &[String]) -> Result<Vec<(Address, u64)>> {
    accounts
        .iter()
        .map(|spec| {
            let (address, amount) = spec
                .split_once('=')
                .ok_or_else(|| Error::Config(format!("--account {spec:?}: expected ADDRESS=AMOUNT")))?;
            let amount = amount
                .parse()
                .map_err(|_| Error::Config(format!("--account {spec:?}: the amount is not a number")))?;
            Ok((Address::from_hex(address)?, amount))
        })
        .collect()
}

fn init(args: InitArgs) -> Result<ExitCode> {
    let mut config = NodeConfig::new(&args.data_dir);
    config.log_partitions = args.log_partitions;
    config.gas_price = args.gas_price;
    config.epoch_blocks = args.epoch_blocks;
    if config.genesis_path().exists() {
        return Err(Error::Config(format!(
            "{} already exists",
            config.genesis_path().display()
        )));
    }
    let genesis = init_data_dir(&config, &args.chain_id, &parse_accounts(&args.accounts)?)?;
    println!(
        "initialized chain {} in {} (genesis {})",
        genesis.chain_id,
        args.data_dir.display(),
        genesis.hash()
    );
    Ok(ExitCode::SUCCESS)
}

/// Fills in the settings of `--config` that no flag gave.
fn with_config_file(mut args: NodeArgs, flags: &clap::ArgMatches) -> Result<NodeArgs> {
    let Some(path) = &args.config else {
        return Ok(args);
    };
    let file = config_file::NodeFile::read(path)?;
    let options = &mut args.node;
    config_file::apply(flags, "data_dir", file.data_dir, &mut options.data_dir);
    config_file::apply(
        flags,
        "block_interval_ms",
        file.block_interval_ms,
        &mut options.block_interval_ms,
    );
    config_file::apply(
        flags,
        "block_transactions_max",
        file.block_transactions_max,
        &mut options.block_transactions_max,
    );
    config_file::apply(
        flags,
        "query_rows_max",
        file.query_rows_max,
        &mut options.query_rows_max,
    );
    config_file::apply(
        flags,
        "log_partitions",
        file.log_partitions,
        &mut options.log_partitions,
    );
    config_file::apply(
        flags,
        "log_group_commit_wait_ms",
        file.log_group_commit_wait_ms,
        &mut options.log_group_commit_wait_ms,
    );
    config_file::apply(
        flags,
        "log_tail_bytes_max",
        file.log_tail_bytes_max,
        &mut options.log_tail_bytes_max,
    );
    config_file::apply(
        flags,
        "snapshots_kept",
        file.snapshots_kept,
        &mut options.snapshots_kept,
    );
    config_file::apply(
        flags,
        "checkpoint_interval",
        file.checkpoint_interval,
        &mut options.checkpoint_interval,
    );
    config_file::apply(
        flags,
        "checkpoints_kept",
        file.checkpoints_kept,
        &mut options.checkpoints_kept,
    );
    config_file::apply(
        flags,
        "log_retention",
        file.log_retention,
        &mut options.log_retention,
    );
    config_file::apply(flags, "peers", file.peer, &mut options.peers);
    config_file::apply(flags, "grpc_listen", file.grpc_listen, &mut args.grpc_listen);
    config_file::apply(
        flags,
        "init_chain_id",
        file.init_chain_id.map(Some),
        &mut args.init_chain_id,
    );
    config_file::apply(flags, "pg_listen", file.pg_listen, &mut args.pg_listen);
    config_file::apply(flags, "no_pg", file.no_pg, &mut args.no_pg);
    config_file::apply(
        flags,
        "pg_create_keys",
        file.pg_create_keys,
        &mut args.pg_create_keys,
    );
    config_file::apply(
        flags,
        "metrics_listen",
        file.metrics_listen,
        &mut args.metrics_listen,
    );
    config_file::apply(flags, "no_metrics", file.no_metrics, &mut args.no_metrics);
    Ok(args)
}

fn node(args: NodeArgs) -> Result<ExitCode> {
    // The consensus core narrates every vote at `info`; the node logs one line per block.
    init_tracing("info,arc_malachitebft_core_consensus=warn");
    let config = args.node.config();
    if let Some(chain_id) = &args.init_chain_id {
        init_data_dir(&config, chain_id, &[])?;
    }
    let runtime = runtime()?;
    runtime.block_on(async {
        let node = Node::open(config).await?;
        let status = node.status();
        tracing::info!(
            chain = %status.chain_id,
            height = status.height,
            state_root = %status.state_root,
            grpc = %args.grpc_listen,
            "node started"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            interrupted_or_terminated().await;
            tracing::info!("shutting down");
            let _ = stop.send(true);
        });
        let until_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let grpc = grpc::serve(node.clone(), args.grpc_listen, until_stopped(stopped.clone()));
        let pg = async {
            if args.no_pg {
                return Ok(());
            }
            tracing::info!(listen = %args.pg_listen, "serving PostgreSQL clients");
            let options = pg::PgOptions {
                keystore: node.data_dir().join("keys"),
                create_keys: args.pg_create_keys,
            };
            pg::serve(
                node.clone(),
                args.pg_listen,
                options,
                until_stopped(stopped.clone()),
            )
            .await
        };
        let metrics = async {
            if args.no_metrics {
                return Ok(());
            }
            tracing::info!(listen = %args.metrics_listen, "serving metrics");
            chainql_server::metrics::serve(node.clone(), args.metrics_listen, until_stopped(stopped.clone()))
                .await
        };
        tokio::try_join!(grpc, pg, metrics)?;
        node.shutdown().await;
        Ok::<(), Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The largest script the shell reads from standard input (as `\\i` reads from a file).
const SCRIPT_BYTES_MAX: u64 = 256 << 20;

/// Completes on SIGINT (Ctrl-C: true) or SIGTERM (what service managers send: false).
async fn interrupted_or_terminated() -> bool {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => true,
        () = terminate => false,
    }
}

fn devnet(args: DevnetArgs) -> Result<ExitCode> {
    use chainql_server::devnet::{Devnet, DevnetSpec, write_spec};
    let spec = DevnetSpec {
        nodes: args.validators + args.followers,
        followers: args.followers,
        base_port: args.base_port,
        chain_id: args.chain_id.clone(),
        epoch_blocks: args.epoch_blocks,
    };
    let devnet: Devnet = write_spec(&args.dir, &spec)?;
    if args.write_only {
        for (i, validator) in devnet.validators.iter().enumerate() {
            println!(
                "validator {i}: {} ({})",
                validator.config.display(),
                validator.grpc_url
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the chainql binary", e))?;
    let mut children = Vec::new();
    for validator in &devnet.validators {
        let log = std::fs::File::create(&validator.log)
            .map_err(|e| Error::io(format!("creating {}", validator.log.display()), e))?;
        let child = std::process::Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(&validator.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io("starting a validator", e))?;
        children.push(child);
    }
    println!(
        "a devnet of {} validators and {} followers is running (chain {}):",
        args.validators, args.followers, args.chain_id
    );
    for (i, validator) in devnet.validators.iter().enumerate() {
        let role = if i < args.validators {
            "validator"
        } else {
            "follower"
        };
        println!(
            "  {role} {i}: gRPC {}  PostgreSQL {}  log {}",
            validator.grpc_url,
            validator.pg_address,
            validator.log.display()
        );
    }
    let first = &devnet.validators[0];
    println!();
    println!("connect the shell to any of them:");
    println!("  chainql shell --connect {}", first.grpc_url);
    println!("check a committed block against the genesis:");
    println!(
        "  chainql verify block 1 --connect {} --genesis {}",
        first.grpc_url,
        devnet.genesis.display()
    );
    println!("Ctrl-C stops them all.");
    let interrupted = runtime()?.block_on(interrupted_or_terminated());
    // On Ctrl-C the validators got the terminal's interrupt too: give them time to stop
    // cleanly. Otherwise they are killed; everything they acknowledged is on disk.
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_secs(if interrupted { 10 } else { 0 });
    for child in &mut children {
        while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `chainql verify block` reads blocks: a running node, or a block store (read-only), each
/// with its name for messages.
enum BlockSource {
    Node(chainql_server::Client, String),
    Store(chainql_consensus::BlockStore, String),
}

impl BlockSource {
    /// Block `height` and its hash; a block the source does not hold is an error.
    fn get(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        height: u64,
    ) -> Result<(chainql::wire::Block, chainql::Hash)> {
        let (found, name) = match self {
            BlockSource::Node(client, url) => (runtime.block_on(client.block(height))?, url),
            BlockSource::Store(store, dir) => (
                store.get(height)?.and_then(|block| {
                    let hash = block.header.as_ref().map(chainql_consensus::header_hash)?;
                    Some((block, hash))
                }),
                dir,
            ),
        };
        found.ok_or_else(|| Error::Client(format!("{name} has no block {height}")))
    }
}

fn verify_block(args: VerifyBlockArgs) -> Result<ExitCode> {
    use chainql_consensus::tendermint::ChainContext;
    use chainql_consensus::tendermint::ValidatorSet;
    use chainql_consensus::{BlockStore, Genesis, announced_set, verify_committed};
    let genesis_path = args.genesis.unwrap_or_else(|| args.data_dir.join("genesis.json"));
    let genesis = Genesis::read(&genesis_path)?;
    if args.height == 0 {
        return Err(Error::Client("block 0 is the genesis; blocks start at 1".into()));
    }
    let ctx = ChainContext::new(&genesis.chain_id);
    let runtime = runtime()?;
    let mut source = match &args.connect {
        Some(url) => BlockSource::Node(
            runtime.block_on(chainql_server::Client::connect(url))?,
            url.clone(),
        ),
        None => BlockSource::Store(
            BlockStore::open_read_only(&args.data_dir.join("blocks"))?,
            args.data_dir.display().to_string(),
        ),
    };
    // The hash of the block before `height`: the genesis hash before block 1.
    let parent_of = |source: &mut BlockSource, height: u64| match height {
        1 => Ok(genesis.hash()),
        h => source.get(&runtime, h - 1).map(|(_, hash)| hash),
    };
    let (block, _) = source.get(&runtime, args.height)?;
    // The validators of the block's height: the genesis set, then each set a block announced
    // (one only after an epoch boundary `b`, in block `b + 1`, committing from `b + 2`), each
    // announcing block checked against the set before it.
    let mut validators: ValidatorSet =
        chainql_consensus::ValidatorSet::from_genesis(&genesis)?.consensus_set()?;
    let mut set_from = 0;
    let mut boundary = genesis.epoch_blocks;
    while boundary + 2 <= args.height {
        let (announcing, _) = source.get(&runtime, boundary + 1)?;
        if !announcing.next_validators.is_empty() {
            let parent_hash = parent_of(&mut source, boundary + 1)?;
            if let Err(error) = verify_committed(&announcing, parent_hash, &ctx, &validators) {
                println!(
                    "block {} does not verify: block {}, which announces its validators, does not: {error}",
                    args.height,
                    boundary + 1
                );
                return Ok(ExitCode::FAILURE);
            }
            validators = announced_set(&announcing.next_validators)?;
            set_from = boundary + 1;
        }
        boundary += genesis.epoch_blocks;
    }
    let parent_hash = parent_of(&mut source, args.height)?;
    if set_from > 0 {
        println!(
            "validators of height {} as block {set_from} announced them",
            args.height
        );
    }
    match verify_committed(&block, parent_hash, &ctx, &validators) {
        Ok(proof) => {
            println!("block {} {} is committed", args.height, proof.hash);
            println!(
                "  decided in round {}: precommits of {} of {} stake ({:.1}%, more than 2/3 needed)",
                proof.round,
                proof.signed_stake,
                proof.total_stake,
                proof.signed_stake as f64 * 100.0 / proof.total_stake.max(1) as f64
            );
            for (address, stake) in &proof.signers {
                println!("  signed by {address} (stake {stake})");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            println!("block {} does not verify: {error}", args.height);
            Ok(ExitCode::FAILURE)
        }
    }
}

fn mirror(args: MirrorArgs) -> Result<ExitCode> {
    use chainql_server::mirror::{Until, run_mirror};
    init_tracing("warn");
    let until = match (args.until_committed, args.until_height) {
        (true, _) => Until::Committed,
        (false, Some(height)) => Until::Height(height),
        (false, None) => Until::Forever,
    };
    // Ctrl-C stops the copy between writes; what was copied stays, and is reported.
    let report = runtime()?.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Registered before the copy starts, so an early Ctrl-C is not lost.
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| Error::io("listening for Ctrl-C", e))?;
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                let _ = stop.send(true);
            }
        });
        run_mirror(&args.connect, &args.dir, until, stopped).await
    })?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    use chainql_consensus::tendermint::sim::{Crash, Network, Partition, Simulation, run};
    if args.validators == 0 || args.equivocators + args.invalid_proposers > args.validators {
        return Err(Error::Client(
            "need at least one validator, and no more faulty ones than validators".into(),
        ));
    }
    let started = std::time::Instant::now();
    let mut failures = 0u64;
    for seed in args.first_seed..args.first_seed.saturating_add(args.seeds) {
        let mut sim = Simulation::new(seed, args.validators, args.heights);
        sim.network = Network {
            delay_ms: (1, args.max_delay_ms.max(1)),
            drop_per_mille: args.drop_per_mille.min(1000),
            duplicate_per_mille: args.duplicate_per_mille.min(1000),
        };
        if args.crashes {
            for validator in 0..args.validators {
                sim.crashes.push(Crash {
                    validator,
                    at_ms: 300 + 700 * validator as u64 + seed % 500,
                    down_ms: 200 + 150 * validator as u64,
                });
            }
        }
        if args.partitions {
            let from_ms = 500 + seed % 1000;
            sim.partitions.push(Partition {
                from_ms,
                until_ms: from_ms + 2_000,
                side: vec![(seed % args.validators as u64) as usize],
            });
        }
        sim.equivocators = (args.validators - args.equivocators..args.validators).collect();
        sim.invalid_proposers = (0..args.invalid_proposers).collect();
        let report = run(sim);
        let disagreements = report.disagreements();
        let ok = disagreements.is_empty()
            && report.root_disagreements().is_empty()
            && report.equivocations == 0
            && report.invalid_committed == 0
            && report.log_errors == 0
            && report.common_height() >= args.heights;
        if !ok {
            failures += 1;
        }
        println!(
            "seed {seed}: {} — height {} at {} ms virtual, {} messages, {} synced, {} replays, \
             disagreements {:?}, state root disagreements {:?}, honest double votes {}, \
             invalid commits {}, trace {}",
            if ok { "ok" } else { "FAILED" },
            report.common_height(),
            report.time_ms,
            report.messages_delivered,
            report.synced.iter().sum::<u64>(),
            report.replays,
            disagreements,
            report.root_disagreements(),
            report.equivocations,
            report.invalid_committed,
            report.trace,
        );
    }
    println!(
        "{} runs, {failures} failed, in {:.1} s",
        args.seeds,
        started.elapsed().as_secs_f64()
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn shell(args: ShellArgs) -> Result<ExitCode> {
    init_tracing("warn");
    let runtime = runtime()?;
    let config = args.node.config();
    let key_path = args
        .key
        .clone()
        .unwrap_or_else(|| config.data_dir.join("keys").join("default.key"));
    let key = load_or_create_key(&key_path)?;
    let (connection, target, embedded) = match &args.connect {
        Some(url) => {
            let remote = runtime.block_on(Client::connect(url))?;
            (Connection::Remote(Arc::new(remote)), url.clone(), None)
        }
        None => {
            init_data_dir(
                &config,
                DEFAULT_CHAIN_ID,
                &[(key.address(), SHELL_ACCOUNT_BALANCE)],
            )?;
            let node = runtime.block_on(Node::open(config.clone()))?;
            let target = format!("the embedded node in {}", config.data_dir.display());
            (Connection::Embedded(node.clone()), target, Some(node))
        }
    };
    let session = runtime.block_on(Session::new(connection, key))?;
    let mut shell = Shell::new(session, runtime.handle().clone(), target);

    let script = match (&args.command, &args.file) {
        (Some(command), _) => Some(command.clone()),
        (None, Some(_)) => None,
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(SCRIPT_BYTES_MAX + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("reading standard input", e))?;
            if bytes.len() as u64 > SCRIPT_BYTES_MAX {
                return Err(Error::Client(format!(
                    "standard input is larger than {} MiB; split the script",
                    SCRIPT_BYTES_MAX >> 20
                )));
            }
            Some(
                String::from_utf8(bytes)
                    .map_err(|_| Error::Client("standard input is not UTF-8 text".into()))?,
            )
        }
        (None, None) => None,
    };
    let ok = match (script, &args.file) {
        (Some(script), _) => shell.run_script(&script),
        (None, Some(file)) => shell.run_file(file),
        (None, None) => {
            let history = config.data_dir.join("shell_history");
            shell.run_interactive(&history)?;
            true
        }
    };
    if let Some(node) = embedded {
        runtime.block_on(node.shutdown());
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    init_tracing("warn");
    let runtime = runtime()?;
    let temporary;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temporary = std::env::temp_dir().join(format!("chainql-bench-{}", std::process::id()));
            temporary.clone()
        }
    };
    if data_dir.exists() {
        return Err(Error::Config(format!(
            "{} already exists; bench needs a fresh directory",
            data_dir.display()
        )));
    }
    let config = BenchConfig {
        workload: args.workload,
        transactions: args.transactions,
        clients: args.clients,
        rows: args.rows,
        block_interval_ms: args.block_interval_ms,
        block_transactions_max: args.block_transactions_max,
        batch: args.batch,
        log_partitions: args.log_partitions,
    };
    if let Some(validators) = args.validators {
        if validators == 0 || validators > chainql_server::devnet::DEVNET_VALIDATORS_MAX {
            return Err(Error::Config(format!(
                "--validators: 1 to {}",
                chainql_server::devnet::DEVNET_VALIDATORS_MAX
            )));
        }
        let exe = std::env::current_exe().map_err(|e| Error::io("finding the chainql binary", e))?;
        let report = runtime.block_on(chainql_server::bench_network::run_network_bench(
            &data_dir, &config, validators, &exe,
        ));
        if args.data_dir.is_none() && report.is_ok() {
            let _ = std::fs::remove_dir_all(&data_dir);
        }
        println!("{}", report?);
        return Ok(ExitCode::SUCCESS);
    }
    let report = runtime.block_on(run_bench(&data_dir, &config));
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("{}", report?);
    Ok(ExitCode::SUCCESS)
}
