//! What a node keeps of its swarm on disk, under `<data dir>/swarm/`:
//! `swarm.json` (role, ids, manager address, gossip keys), `node.crt`,
//! `node.key`, `ca.crt`, and on the manager `state.redb`. The directory is
//! root's alone: it holds the node's key and, on the manager, the CA's.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use shoal_control::ca::{self, Role};

use crate::error::Error;

/// What `swarm.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwarmConfig {
    /// Cluster id.
    pub cluster_id: String,
    /// This node's id in the cluster (its certificate's CN).
    pub node_id: String,
    /// This node's role.
    pub role: Role,
    /// The manager's control address.
    pub manager: SocketAddr,
    /// The manager's gossip address (the gossip seed).
    pub gossip_seed: SocketAddrV4,
    /// The gossip key ring, as key-file text.
    pub gossip_keys: String,
    /// Its version (a rotation bumps it at every step).
    #[serde(default)]
    pub gossip_keys_version: u64,
    /// Heartbeat period in seconds.
    pub heartbeat_secs: u64,
}

/// `<data dir>/swarm`.
pub fn swarm_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("swarm")
}

/// Creates the swarm directory readable by root alone.
pub fn private_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(Error::io(format!("restrict {}", dir.display())))
}

/// Writes a new swarm's files: its config, the node's certificate and key,
/// and the CA certificate.
pub fn write_files(dir: &Path, config: &SwarmConfig, cert: &str, key: &str, ca: &str) -> Result<(), Error> {
    private_dir(dir)?;
    let write = |name: &str, text: &[u8]| {
        std::fs::write(dir.join(name), text).map_err(Error::io(format!("write {}", dir.join(name).display())))
    };
    write("node.crt", cert.as_bytes())?;
    write("node.key", key.as_bytes())?;
    std::fs::set_permissions(dir.join("node.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(Error::io("restrict node.key"))?;
    write("ca.crt", ca.as_bytes())?;
    write("swarm.json", &serde_json::to_vec_pretty(config).expect("serialisable"))
}

/// The recorded swarm, if this node is in one.
pub fn read(data_dir: &Path) -> Result<Option<SwarmConfig>, Error> {
    let path = swarm_dir(data_dir).join("swarm.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", path.display()))(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Internal(format!("{} is corrupt: {e}", path.display())))
}

/// Records the swarm's gossip key ring of `version` in the node's
/// `swarm.json` (written beside it, then renamed over it), so a restart
/// gossips with it.
pub fn record_gossip_keys(dir: &Path, keys: &str, version: u64) -> Result<(), Error> {
    let path = dir.join("swarm.json");
    let text = std::fs::read_to_string(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut config: SwarmConfig = serde_json::from_str(&text)
        .map_err(|e| Error::Internal(format!("{} is corrupt: {e}", path.display())))?;
    config.gossip_keys = keys.to_owned();
    config.gossip_keys_version = version;
    let next = dir.join("swarm.json.new");
    std::fs::write(&next, serde_json::to_vec_pretty(&config).expect("serialisable"))
        .map_err(Error::io(format!("write {}", next.display())))?;
    std::fs::rename(&next, &path).map_err(Error::io(format!("replace {}", path.display())))
}

/// Replaces the node's key and certificate: both written beside the old
/// ones (the key 0600), then renamed over them, certificate last, so a crash
/// leaves the old pair or a key whose certificate is still the old one's
/// successor to be fetched again, never a half-written file.
pub fn replace_key_pair(dir: &Path, cert: &str, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("node.key.new"))?;
    file.write_all(key.as_bytes())?;
    file.sync_all()?;
    std::fs::write(dir.join("node.crt.new"), cert)?;
    std::fs::rename(dir.join("node.key.new"), dir.join("node.key"))?;
    std::fs::rename(dir.join("node.crt.new"), dir.join("node.crt"))
}

/// When the node certificate in `dir` was issued and when it expires.
pub fn certificate_life(dir: &Path) -> Result<(SystemTime, SystemTime), Error> {
    let path = dir.join("node.crt");
    let cert = std::fs::read_to_string(&path).map_err(Error::io(format!("read {}", path.display())))?;
    let der =
        ca::pem_to_der(&cert).ok_or_else(|| Error::Internal(format!("{} is not PEM", path.display())))?;
    let (_, _, not_after) = ca::identity(&der)?;
    let issued = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(Error::io(format!("read {}", path.display())))?;
    Ok((issued, std::time::UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64)))
}
