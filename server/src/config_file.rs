//! `node.toml`: every setting of `chainql node`, under the name of its flag. A flag given on the
//! command line (or through its environment variable) wins over the file; the file wins over the
//! flag's default.
//!
//! ```toml
//! data-dir = "node1"
//! block-interval-ms = 20
//! grpc-listen = "127.0.0.1:50051"
//! pg-listen = "127.0.0.1:5433"
//! peer = ["http://127.0.0.1:50052", "http://127.0.0.1:50053"]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::Deserialize;

use crate::error::{Error, Result};

/// The settings a file may hold; each is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct NodeFile {
    pub data_dir: Option<PathBuf>,
    pub block_interval_ms: Option<u64>,
    pub block_transactions_max: Option<usize>,
    pub query_rows_max: Option<usize>,
    pub log_partitions: Option<u32>,
    pub log_group_commit_wait_ms: Option<u64>,
    pub log_tail_bytes_max: Option<usize>,
    pub snapshots_kept: Option<u64>,
    pub checkpoint_interval: Option<u64>,
    pub checkpoints_kept: Option<usize>,
    pub log_retention: Option<bool>,
    pub peer: Option<Vec<String>>,
    pub grpc_listen: Option<SocketAddr>,
    pub init_chain_id: Option<String>,
    pub pg_listen: Option<SocketAddr>,
    pub no_pg: Option<bool>,
    pub pg_create_keys: Option<bool>,
    pub metrics_listen: Option<SocketAddr>,
    pub no_metrics: Option<bool>,
}

/// The largest configuration file read, in bytes.
const FILE_BYTES_MAX: u64 = 1 << 20;

impl NodeFile {
    /// Reads and checks `path`: unknown settings and wrong types are errors naming the file.
    pub fn read(path: &Path) -> Result<NodeFile> {
        let context = || format!("reading {}", path.display());
        let size = std::fs::metadata(path)
            .map_err(|e| Error::io(context(), e))?
            .len();
        if size > FILE_BYTES_MAX {
            return Err(Error::Config(format!(
                "{} is {size} bytes; a configuration file may have at most {FILE_BYTES_MAX}",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(context(), e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// True when the flag `id` was given on the command line or by its environment variable.
pub fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Sets `target` from the file unless the flag `id` was given.
pub fn apply<T>(matches: &ArgMatches, id: &str, from_file: Option<T>, target: &mut T) {
    if let Some(value) = from_file
        && !given(matches, id)
    {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_settings_and_wrong_types_are_refused() {
        let file: NodeFile =
            toml::from_str("block-interval-ms = 20\npg-listen = \"127.0.0.1:6000\"").expect("parses");
        assert_eq!(file.block_interval_ms, Some(20));
        assert_eq!(file.pg_listen, Some("127.0.0.1:6000".parse().expect("address")));
        let error = toml::from_str::<NodeFile>("block-intervall-ms = 20").expect_err("unknown");
        assert!(error.to_string().contains("unknown field"), "{error}");
        assert!(toml::from_str::<NodeFile>("block-interval-ms = \"soon\"").is_err());
    }
}
