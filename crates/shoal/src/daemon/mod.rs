//! `shoal daemon`: the node agent. It owns this node's data plane, runs
//! gossip on 7946 to learn where every endpoint lives, and serves the local
//! API on a unix socket.

mod agent;
mod api;
mod cluster;
mod gossip;
mod services;
mod state;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};

use shoal_dataplane::{Dataplane, DataplaneConfig};
use shoal_gossip::{GossipConfig, KeyRing, Member, NodeId};
use tokio::signal::unix::{SignalKind, signal};

/// Everything `shoal daemon` is told on its command line.
#[derive(Debug, Clone)]
pub struct DaemonArgs {
    /// State directory (node id, epoch, swarm state, sandboxes to clean after a crash).
    pub data_dir: PathBuf,
    /// This node's address on the underlay: gossip and VXLAN use it.
    pub advertise_addr: Ipv4Addr,
    /// Where gossip and VXLAN sockets listen.
    pub listen_addr: Ipv4Addr,
    /// Gossip port (UDP and TCP).
    pub gossip_port: u16,
    /// VXLAN port.
    pub data_port: u16,
    /// Control-plane port (QUIC) of managers.
    pub control_port: u16,
    /// Gossip addresses to join through (with a key file only).
    pub join: Vec<SocketAddrV4>,
    /// Gossip key file: start gossip at once, outside any swarm (tests, labs).
    pub gossip_key_file: Option<PathBuf>,
    /// Local API socket.
    pub socket: PathBuf,
    /// Overlay MTU.
    pub mtu: u16,
    /// Hostname to report (default: the kernel's).
    pub hostname: Option<String>,
    /// Prefix of task sandbox (network namespace) and cgroup names.
    pub task_prefix: String,
}

/// What the running daemon keeps of its arguments.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Underlay address.
    pub advertise_addr: Ipv4Addr,
    /// Listen address.
    pub listen_addr: Ipv4Addr,
    /// Gossip port.
    pub gossip_port: u16,
    /// VXLAN port.
    pub data_port: u16,
    /// Control port.
    pub control_port: u16,
    /// Overlay MTU.
    pub mtu: u16,
    /// Reported hostname.
    pub hostname: String,
    /// Prefix of task sandbox and cgroup names.
    pub task_prefix: String,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "shoal daemon creates namespaces and TUN devices and needs root"
    );
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("create data directory {}", args.data_dir.display()))?;
    let ring = args.gossip_key_file.as_deref().map(read_key_file).transpose()?;
    let id = node_id(&args.data_dir)?;
    let epoch = next_epoch(&args.data_dir)?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(serve(args, ring, id, epoch))
}

async fn serve(args: DaemonArgs, ring: Option<KeyRing>, id: NodeId, epoch: u64) -> anyhow::Result<()> {
    agent::remove_leftovers(&args.data_dir);
    state::remove_stale_sandboxes(&args.data_dir);
    let dataplane = Dataplane::start(&DataplaneConfig {
        port: args.data_port,
        mtu: args.mtu,
        listen: args.listen_addr,
        ..DataplaneConfig::new(args.advertise_addr)
    })
    .with_context(|| format!("bind the VXLAN port {}:{}", args.listen_addr, args.data_port))?;
    let gossip_addr = SocketAddrV4::new(args.advertise_addr, args.gossip_port);
    let me = Member { id, addr: gossip_addr, epoch, incarnation: 0 };
    let hostname = args.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
    });
    let settings = Settings {
        advertise_addr: args.advertise_addr,
        listen_addr: args.listen_addr,
        gossip_port: args.gossip_port,
        data_port: args.data_port,
        control_port: args.control_port,
        mtu: args.mtu,
        hostname,
        task_prefix: args.task_prefix.clone(),
    };
    let state = Arc::new(state::State::new(me, args.data_dir.clone(), dataplane, settings));
    if let Some(ring) = ring {
        start_gossip(&state, ring, &args.join).await?;
    }
    cluster::resume(&state).await.context("resume this node's swarm")?;

    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&args.socket);
    let listener = tokio::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tracing::info!(node = %id, epoch, gossip = %gossip_addr, socket = %args.socket.display(), "daemon ready");
    let api = tokio::spawn(api::serve(listener, state.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
    api.abort();
    cluster::stop_agent(&state).await;
    state.remove_all_endpoints().await;
    if let Ok(gossip) = state.gossip() {
        // One gossip round for the withdrawn rows to go out, then say goodbye.
        tokio::time::sleep(Duration::from_millis(300)).await;
        gossip.leave().await;
    }
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}

/// Starts gossip with `ring`, joining through `seeds`, and routes its events
/// into the data plane.
pub async fn start_gossip(
    state: &Arc<state::State>,
    ring: KeyRing,
    seeds: &[SocketAddrV4],
) -> anyhow::Result<()> {
    let listen = SocketAddrV4::new(state.settings.listen_addr, state.settings.gossip_port);
    let (handle, driver) = gossip::start(state.me, listen, GossipConfig::default(), ring, seeds)
        .await
        .with_context(|| format!("bind the gossip port {listen}"))?;
    state.set_gossip(Some(handle));
    tokio::spawn(gossip::apply_events(driver.events, state.clone()));
    Ok(())
}

/// Parses key-file text (`ID:HEX` lines, the first primary).
pub fn parse_keys(text: &str, origin: &str) -> anyhow::Result<KeyRing> {
    let mut ring: Option<KeyRing> = None;
    for (n, line) in
        text.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = || format!("{origin}:{}: expected ID:HEX with a key id 0-255 and 64 hex digits", n + 1);
        let (id, hex) = line.split_once(':').with_context(bad)?;
        let id: u8 = id.trim().parse().ok().with_context(bad)?;
        let key = parse_hex_key(hex.trim()).with_context(bad)?;
        match ring.as_mut() {
            None => ring = Some(KeyRing::new(id, key)),
            Some(r) => r.add(id, key),
        }
    }
    ring.with_context(|| format!("gossip key file {origin} holds no key"))
}

/// Reads a gossip key file: one key a line, `ID:HEX` (a byte id, 32 bytes in
/// hex); the first line is the primary key.
pub fn read_key_file(path: &Path) -> anyhow::Result<KeyRing> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!("read gossip key file {}: create one with `shoal gossip keygen > FILE`", path.display())
    })?;
    parse_keys(&text, &path.display().to_string())
}

fn parse_hex_key(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

/// 8 random bytes from the kernel.
pub fn random_u64() -> anyhow::Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A new gossip key line, `1:HEX`.
pub fn keygen() -> anyhow::Result<String> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))?;
    Ok(format!("1:{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// The node's stable id, created on first start.
fn node_id(dir: &Path) -> anyhow::Result<NodeId> {
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16)
            .map(NodeId)
            .with_context(|| format!("{} is corrupt: remove it to get a new node id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = NodeId(random_u64()?);
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// A new epoch for this start: the wall clock in milliseconds, and always
/// above the last one recorded, so a restart is always newer.
fn next_epoch(dir: &Path) -> anyhow::Result<u64> {
    let path = dir.join("epoch");
    let last: u64 = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let epoch = now.max(last + 1);
    std::fs::write(&path, format!("{epoch}\n")).with_context(|| format!("write {}", path.display()))?;
    if epoch == 0 {
        bail!("epoch overflow");
    }
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_parse_and_bad_ones_say_why() {
        let dir = std::env::temp_dir().join(format!("shoal-keytest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("# gossip keys\n{}\n2:{}\n", keygen().unwrap(), "ab".repeat(32)))
            .unwrap();
        let ring = read_key_file(&file).unwrap();
        assert_eq!(ring.primary(), 1);
        std::fs::write(&file, "1:abcd\n").unwrap();
        let err = format!("{:#}", read_key_file(&file).unwrap_err());
        assert!(err.contains("expected ID:HEX"), "{err}");
        std::fs::write(&file, "\n").unwrap();
        assert!(format!("{:#}", read_key_file(&file).unwrap_err()).contains("holds no key"));
        let err = format!("{:#}", read_key_file(&dir.join("missing")).unwrap_err());
        assert!(err.contains("shoal gossip keygen"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn epochs_always_increase() {
        let dir = std::env::temp_dir().join(format!("shoal-epochtest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("epoch"), format!("{}\n", u64::MAX / 2)).unwrap();
        let a = next_epoch(&dir).unwrap();
        let b = next_epoch(&dir).unwrap();
        assert!(b > a && a > u64::MAX / 2);
        let id = node_id(&dir).unwrap();
        assert_eq!(node_id(&dir).unwrap(), id, "the node id is stable");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
