//! Helpers shared by the tests: free ports, a `chainql node` child process, waiting for it.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chainql_server::Client;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
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
        let port = free_port();
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
        NodeProcess::ready(child, format!("http://127.0.0.1:{port}")).await
    }

    /// A started node process, once its gRPC API at `url` answers.
    async fn ready(child: Child, url: String) -> NodeProcess {
        let process = NodeProcess { child, url };
        process.wait_ready().await;
        process
    }

    /// Starts `chainql node --config CONFIG` (a devnet validator's settings) serving gRPC at
    /// `url`, without its PostgreSQL and metrics listeners, logging to `log`.
    pub async fn start_with_config(config: &Path, url: &str, log: impl Into<Stdio>) -> NodeProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_chainql"))
            .args(["node", "--no-pg", "--no-metrics", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chainql node");
        NodeProcess::ready(child, url.to_string()).await
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(remote) = Client::connect(&self.url).await
                && remote.status().await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node at {} did not start",
                self.url
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
