//! `chainql devnet`: a local network of validators on loopback, one data directory each.
//!
//! ```text
//! DIR/genesis.json               the chain: every validator with an equal stake, and every
//!                                node's account with a balance to stake
//! DIR/validator-N/               validator N's data directory (keys/validator.key, its genesis copy)
//! DIR/validator-N/node.toml      its settings: ports, and the other validators as peers
//! DIR/validator-N/node.log       its log, while `chainql devnet` runs it
//! ```
//!
//! The first run creates the keys and the genesis; later runs reuse them (and the chain's data).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chainql::Keypair;
use chainql_consensus::{Genesis, GenesisAccount, GenesisValidator};

use crate::error::{Error, Result};

/// The most validators a devnet runs.
pub const DEVNET_VALIDATORS_MAX: usize = 64;
/// Each validator's stake.
const STAKE: u64 = 100;
/// Each node's opening balance, for staking and fees.
const BALANCE: u64 = 1_000_000;

/// What a devnet is made of.
#[derive(Debug, Clone)]
pub struct DevnetSpec {
    /// Nodes in all.
    pub nodes: usize,
    /// Of them, how many (the last ones) start outside the validator set: they follow the chain
    /// and join the set by staking.
    pub followers: usize,
    pub base_port: u16,
    pub chain_id: String,
    /// The genesis's epoch length.
    pub epoch_blocks: u64,
}

impl DevnetSpec {
    /// `nodes` validators with equal stake, and the default epoch length.
    pub fn validators(nodes: usize, base_port: u16, chain_id: &str) -> DevnetSpec {
        DevnetSpec {
            nodes,
            followers: 0,
            base_port,
            chain_id: chain_id.to_string(),
            epoch_blocks: chainql_consensus::DEFAULT_EPOCH_BLOCKS,
        }
    }
}

/// One validator of a devnet.
#[derive(Debug, Clone)]
pub struct DevnetValidator {
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub grpc_address: SocketAddr,
    pub grpc_url: String,
    pub pg_address: SocketAddr,
    pub metrics_address: SocketAddr,
}

/// A devnet's layout.
#[derive(Debug, Clone)]
pub struct Devnet {
    pub genesis: PathBuf,
    pub validators: Vec<DevnetValidator>,
}

/// A base port whose next `count` ports (a devnet's gRPC ports) were free a moment ago, with
/// room above it for the PostgreSQL and metrics ports.
///
/// No two calls in one process return overlapping ports (gRPC, PostgreSQL or metrics), even
/// once a port is free again: a validator stopped for a while must find its port unclaimed
/// when it restarts, whatever else the process started meanwhile.
pub fn free_base_port(count: usize) -> Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    // Below the kernel's ephemeral range, where outgoing connections take their local ports:
    // a validator restarted on its port must not find it taken by some client's connection.
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    const LOWEST: u32 = 10_000;
    let span = ephemeral_low.saturating_sub(LOWEST + 200 + count as u32).max(1);
    // Where to start looking differs between processes, so parallel runs rarely collide.
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    for attempt in 0..500u64 {
        let base =
            (LOWEST + ((seed.wrapping_add(attempt.wrapping_mul(7_919))) % u64::from(span)) as u32) as u16;
        let ports: Vec<u16> = [0, 100, 200]
            .into_iter()
            .flat_map(|offset| (0..count as u16).map(move |i| base + offset + i))
            .collect();
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if ports.iter().all(|port| !handed_out.contains(port))
            && (0..count as u16).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            handed_out.extend(ports);
            return Ok(base);
        }
    }
    Err(Error::Client("no free range of ports for the validators".into()))
}

/// Writes (or finds) a devnet of `count` validators in `dir`: keys, a genesis naming them all,
/// and each validator's `node.toml` with ports from `base_port` and the others as peers.
pub fn write(dir: &Path, count: usize, base_port: u16, chain_id: &str) -> Result<Devnet> {
    write_spec(dir, &DevnetSpec::validators(count, base_port, chain_id))
}

/// Writes (or finds) the devnet `spec` describes in `dir`.
pub fn write_spec(dir: &Path, spec: &DevnetSpec) -> Result<Devnet> {
    let (count, base_port, chain_id) = (spec.nodes, spec.base_port, spec.chain_id.as_str());
    if spec.followers >= count {
        return Err(Error::Config(
            "a devnet needs at least one validator besides its followers".into(),
        ));
    }
    if count == 0 || count > DEVNET_VALIDATORS_MAX {
        return Err(Error::Config(format!(
            "a devnet has 1 to {DEVNET_VALIDATORS_MAX} validators"
        )));
    }
    if base_port as usize + 200 + count > u16::MAX as usize || base_port < 1024 {
        return Err(Error::Config(format!(
            "base port {base_port}: ports from it to it + {} must be between 1024 and 65535",
            200 + count
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let dir = dir
        .canonicalize()
        .map_err(|e| Error::io(format!("resolving {}", dir.display()), e))?;
    let port = |offset: usize, i: usize| SocketAddr::from(([127, 0, 0, 1], base_port + (offset + i) as u16));
    let validators: Vec<DevnetValidator> = (0..count)
        .map(|i| {
            let data_dir = dir.join(format!("validator-{i}"));
            let grpc_address = port(0, i);
            DevnetValidator {
                config: data_dir.join("node.toml"),
                log: data_dir.join("node.log"),
                data_dir,
                grpc_url: format!("http://{grpc_address}"),
                grpc_address,
                pg_address: port(100, i),
                metrics_address: port(200, i),
            }
        })
        .collect();
    let mut keys = Vec::new();
    for validator in &validators {
        let (key, _) = Keypair::load_or_create(&validator.data_dir.join("keys").join("validator.key"))?;
        keys.push(key);
    }
    let genesis_path = dir.join("genesis.json");
    let genesis = if genesis_path.exists() {
        let genesis = Genesis::read(&genesis_path)?;
        let named = genesis.validators()?;
        let validators = &keys[..count - spec.followers];
        let all_there = named.len() == validators.len()
            && validators
                .iter()
                .all(|k| named.iter().any(|v| v.public_key == k.public_key()));
        if !all_there {
            return Err(Error::Config(format!(
                "{} names other validators than the {count} in {}: use another --dir",
                genesis_path.display(),
                dir.display()
            )));
        }
        genesis
    } else {
        let genesis = Genesis {
            chain_id: chain_id.to_string(),
            genesis_time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            log_partitions: 4,
            validators: keys[..count - spec.followers]
                .iter()
                .map(|key| GenesisValidator {
                    public_key: format!("0x{}", hex::encode(key.public_key().to_bytes())),
                    stake: STAKE,
                })
                .collect(),
            accounts: keys
                .iter()
                .map(|key| GenesisAccount {
                    address: key.address().to_hex(),
                    balance: BALANCE,
                })
                .collect(),
            gas_price: 0,
            epoch_blocks: spec.epoch_blocks,
        };
        genesis.validate()?;
        genesis.write(&genesis_path)?;
        genesis
    };
    for (i, validator) in validators.iter().enumerate() {
        genesis.write(&validator.data_dir.join("genesis.json"))?;
        let peers: Vec<String> = validators
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, v)| format!("{:?}", v.grpc_url))
            .collect();
        let toml = format!(
            "# Validator {i} of the devnet in {dir}.\n\
             data-dir = {data_dir:?}\n\
             grpc-listen = \"{grpc}\"\n\
             pg-listen = \"{pg}\"\n\
             metrics-listen = \"{metrics}\"\n\
             peer = [{peers}]\n",
            dir = dir.display(),
            data_dir = validator.data_dir.display().to_string(),
            grpc = validator.grpc_address,
            pg = validator.pg_address,
            metrics = validator.metrics_address,
            peers = peers.join(", "),
        );
        chainql_consensus::write_file_durably(&validator.config, toml.as_bytes())?;
    }
    Ok(Devnet {
        genesis: genesis_path,
        validators,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_devnet_is_written_once_and_found_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let devnet = write(dir.path(), 3, 30_000, "dev").expect("write");
        assert_eq!(devnet.validators.len(), 3);
        let genesis = Genesis::read(&devnet.genesis).expect("genesis");
        assert_eq!(genesis.validators.len(), 3);
        assert!(genesis.validators.iter().all(|v| v.stake == STAKE));
        let toml = std::fs::read_to_string(&devnet.validators[1].config).expect("node.toml");
        let file: crate::config_file::NodeFile = toml::from_str(&toml).expect("a valid node.toml");
        assert_eq!(
            file.peer,
            Some(vec![
                "http://127.0.0.1:30000".to_string(),
                "http://127.0.0.1:30002".to_string()
            ])
        );
        assert_eq!(
            file.grpc_listen,
            Some("127.0.0.1:30001".parse().expect("address"))
        );
        assert_eq!(file.pg_listen, Some("127.0.0.1:30101".parse().expect("address")));

        // A second run keeps the keys and the genesis.
        let again = write(dir.path(), 3, 30_000, "dev").expect("again");
        assert_eq!(Genesis::read(&again.genesis).expect("genesis"), genesis);
        // Another number of validators does not match the genesis.
        assert!(write(dir.path(), 4, 30_000, "dev").is_err());
        assert!(write(dir.path(), 0, 30_000, "dev").is_err());
        assert!(write(dir.path(), 3, 65_500, "dev").is_err());

        // Followers have an account but no stake.
        let other = tempfile::tempdir().expect("tempdir");
        let spec = DevnetSpec {
            followers: 1,
            epoch_blocks: 5,
            ..DevnetSpec::validators(3, 30_000, "dev")
        };
        let devnet = write_spec(other.path(), &spec).expect("write");
        let genesis = Genesis::read(&devnet.genesis).expect("genesis");
        assert_eq!(
            (
                genesis.validators.len(),
                genesis.accounts.len(),
                genesis.epoch_blocks
            ),
            (2, 3, 5)
        );
        assert!(
            write_spec(
                other.path(),
                &DevnetSpec {
                    followers: 0,
                    ..spec.clone()
                }
            )
            .is_err()
        );
        assert!(write_spec(other.path(), &DevnetSpec { followers: 3, ..spec }).is_err());
    }
}
