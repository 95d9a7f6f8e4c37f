//! Helpers shared by the tests: free ports, a `chainql node` child process, waiting for it, and
//! a devnet's processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainql::Hash;
use chainql_server::Client;

/// A port that was free a moment ago, below the ephemeral range (so a node restarted on it
/// does not find it taken by an outgoing connection).
pub fn free_port() -> u16 {
    chainql_server::devnet::free_base_port(1).expect("a free port")
}

/// Runs the `chainql` binary with `arguments` and checks it succeeded.
pub fn chainql(arguments: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_chainql"))
        .args(arguments)
        .output()
        .expect("run chainql");
    assert!(
        output.status.success(),
        "chainql {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A `chainql node` process, killed (SIGKILL) when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub url: String,
    /// Where its log goes, when a file: shown if the node fails to start.
    log: Option<PathBuf>,
}

impl NodeProcess {
    pub async fn start(data_dir: &Path) -> NodeProcess {
        NodeProcess::start_logging(data_dir, Stdio::null()).await
    }

    /// Creates a chain in `data_dir` (`chainql init`) and starts a node on it.
    pub async fn init_and_start(data_dir: &Path, chain_id: &str) -> NodeProcess {
        chainql(&[
            "init",
            "--data-dir",
            data_dir.to_str().expect("a UTF-8 path"),
            "--chain-id",
            chain_id,
        ]);
        NodeProcess::start(data_dir).await
    }

    /// Starts a node whose log (stderr) goes to `log`.
    pub async fn start_logging(data_dir: &Path, log: impl Into<Stdio>) -> NodeProcess {
        NodeProcess::start_on(data_dir, free_port(), log).await
    }

    /// Starts a node serving gRPC on `port` (as it did before a restart), logging to `log`.
    pub async fn start_on(data_dir: &Path, port: u16, log: impl Into<Stdio>) -> NodeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_chainql"))
            .args(["node", "--data-dir"])
            .arg(data_dir)
            .args([
                "--grpc-listen",
                &format!("127.0.0.1:{port}"),
                "--block-interval-ms",
                "5",
                // Checkpoints every few blocks: a restart loads one and replays the rest.
                "--checkpoint-interval",
                "3",
                // Tests run side by side: only the gRPC port is chosen per node.
                "--no-pg",
                "--no-metrics",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chainql node");
        NodeProcess::ready(child, format!("http://127.0.0.1:{port}"), None).await
    }

    /// A started node process, once its gRPC API at `url` answers.
    async fn ready(child: Child, url: String, log: Option<PathBuf>) -> NodeProcess {
        let mut process = NodeProcess { child, url, log };
        process.wait_ready().await;
        process
    }

    /// Starts `chainql node --config CONFIG` (a devnet validator's settings) serving gRPC at
    /// `url`, without its PostgreSQL and metrics listeners, appending its log to `log`.
    pub async fn start_with_config(config: &Path, url: &str, log: &Path) -> NodeProcess {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_chainql"))
            .args(["node", "--no-pg", "--no-metrics", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start chainql node");
        NodeProcess::ready(child, url.to_string(), Some(log.to_path_buf())).await
    }

    /// Waits until the node's gRPC API answers; fails at once, with its exit status and log,
    /// if the process ends first.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(remote) = Client::connect(&self.url).await
                && remote.status().await.is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the node for {} exited ({status}) before serving{}",
                    self.url,
                    self.log_tail()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the node at {} did not start{}",
                self.url,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the node's log file, if it has one, for a failure message.
    fn log_tail(&self) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("; the end of {}:\n{tail}", path.display())
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node's gRPC services on a free loopback port, served from this process until [`stop`].
///
/// [`stop`]: Serving::stop
pub struct Serving {
    pub url: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<chainql_server::Result<()>>,
}

impl Serving {
    pub async fn start(node: &chainql_server::Node) -> Serving {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(chainql_server::grpc::serve_listener(
            node.clone(),
            listener,
            async {
                let _ = stopped.await;
            },
        ));
        Serving { url, stop, server }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// The processes of a devnet `chainql devnet --write-only` wrote: node i serves gRPC on
/// `base + i`, and logs to `DIR/validator-i/node.log`.
pub struct DevnetProcesses {
    pub dir: PathBuf,
    pub base: u16,
    pub nodes: Vec<Option<NodeProcess>>,
}

impl DevnetProcesses {
    /// Writes a devnet of `count` nodes with `chainql devnet ARGS --write-only` in a folder of
    /// `parent`, on free ports; starts nothing.
    pub fn write(parent: &Path, count: usize, args: &[&str]) -> DevnetProcesses {
        let base = chainql_server::devnet::free_base_port(count).expect("free ports");
        let root = parent.join("devnet");
        let base_text = base.to_string();
        let mut arguments = vec!["devnet"];
        arguments.extend_from_slice(args);
        arguments.extend_from_slice(&[
            "--dir",
            root.to_str().expect("UTF-8"),
            "--base-port",
            &base_text,
            "--write-only",
        ]);
        let written = chainql(&arguments);
        assert_eq!(written.lines().count(), count, "{written}");
        DevnetProcesses {
            dir: root.canonicalize().expect("dir"),
            base,
            nodes: (0..count).map(|_| None).collect(),
        }
    }

    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.base + i as u16)
    }

    pub async fn start(&mut self, i: usize) {
        let data_dir = self.dir.join(format!("validator-{i}"));
        let url = self.url(i);
        self.nodes[i] = Some(
            NodeProcess::start_with_config(&data_dir.join("node.toml"), &url, &data_dir.join("node.log"))
                .await,
        );
    }

    /// `kill -9` of node i.
    pub fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.kill();
        }
    }

    pub async fn client(&self, i: usize) -> Client {
        Client::connect(&self.url(i)).await.expect("connect")
    }

    /// What each running validator reports: (height, state root).
    pub async fn statuses(&self, running: &[usize]) -> Vec<(u64, Hash)> {
        let mut statuses = Vec::new();
        for &i in running {
            let status = self.client(i).await.status().await.expect("status");
            statuses.push((status.height, status.state_root));
        }
        statuses
    }

    /// Waits until every running validator is at the same height with the same state root.
    pub async fn wait_agreed(&self, running: &[usize]) -> (u64, Hash) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let statuses = self.statuses(running).await;
            if statuses.windows(2).all(|w| w[0] == w[1]) {
                return statuses[0];
            }
            assert!(
                Instant::now() < deadline,
                "validators {running:?} did not agree: {statuses:?} (logs in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
