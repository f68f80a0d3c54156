//! `shoal dataplane run`: a node's data plane programmed from a static file,
//! without gossip or a swarm (the data plane's own tests and benchmarks use
//! it; `shoal daemon` learns the same tables by gossip).
//!
//! Every node reads the same file; endpoints whose `node` is this node's
//! underlay address get a sandbox here, the rest are routes to other nodes.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};
use shoal_dataplane::{CounterSnapshot, Dataplane, DataplaneConfig, EndpointId};
use shoal_runtime::{InterfaceSpec, Sandbox};
use shoal_wire::Vni;
use shoal_wire::ip::Ipv4Cidr;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};

/// The file format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverlayFile {
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default = "default_mtu")]
    mtu: u16,
    /// Complete inner TCP checksums: a peer is the kernel's vxlan device.
    #[serde(default)]
    inner_checksums: bool,
    networks: Vec<NetworkEntry>,
    endpoints: Vec<EndpointEntry>,
}

fn default_port() -> u16 {
    shoal_wire::vxlan::DEFAULT_PORT
}

fn default_mtu() -> u16 {
    1450
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkEntry {
    vni: u32,
    subnet: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointEntry {
    vni: u32,
    ip: Ipv4Addr,
    node: Ipv4Addr,
    #[serde(default)]
    sandbox: Option<String>,
}

/// A validated file.
#[derive(Debug)]
struct Overlay {
    port: u16,
    mtu: u16,
    inner_checksums: bool,
    networks: BTreeMap<Vni, Ipv4Cidr>,
    endpoints: Vec<Endpoint>,
}

#[derive(Debug)]
struct Endpoint {
    vni: Vni,
    ip: Ipv4Addr,
    node: Ipv4Addr,
    sandbox: Option<String>,
}

fn parse(text: &str) -> anyhow::Result<Overlay> {
    let file: OverlayFile = serde_json::from_str(text)?;
    ensure!((576..=9000).contains(&file.mtu), "mtu {} is out of range: use 576 to 9000", file.mtu);
    let mut networks = BTreeMap::new();
    for n in &file.networks {
        let vni = Vni::new(n.vni).with_context(|| format!("vni {} does not fit in 24 bits", n.vni))?;
        let subnet: Ipv4Cidr = n.subnet.parse()?;
        ensure!(networks.insert(vni, subnet).is_none(), "vni {vni} is listed twice");
    }
    let mut seen = HashSet::new();
    let mut endpoints = Vec::new();
    for e in file.endpoints {
        let vni = Vni::new(e.vni).with_context(|| format!("vni {} does not fit in 24 bits", e.vni))?;
        let Some(subnet) = networks.get(&vni) else {
            bail!("endpoint {} names vni {vni}, which no network has: add it to \"networks\"", e.ip)
        };
        ensure!(subnet.contains(e.ip), "endpoint {} is outside its network {subnet}", e.ip);
        ensure!(seen.insert((vni, e.ip)), "endpoint {} is listed twice in vni {vni}", e.ip);
        endpoints.push(Endpoint { vni, ip: e.ip, node: e.node, sandbox: e.sandbox });
    }
    Ok(Overlay { port: file.port, mtu: file.mtu, inner_checksums: file.inner_checksums, networks, endpoints })
}

/// What `stats` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    /// Packet counters.
    pub counters: CounterSnapshot,
    /// Endpoints on this node.
    pub endpoints: Vec<LocalEndpoint>,
}

/// An endpoint on this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// Its sandbox (network namespace).
    pub sandbox: String,
    /// Interface inside the sandbox.
    pub interface: String,
    /// Network.
    pub vni: u32,
    /// Address.
    pub ip: Ipv4Addr,
}

/// `shoal dataplane run`.
pub fn run(config: &Path, underlay: Ipv4Addr, control: Option<&Path>) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "shoal dataplane run creates network namespaces and TUN devices and needs root"
    );
    let text = std::fs::read_to_string(config).with_context(|| format!("read {}", config.display()))?;
    let overlay = parse(&text).with_context(|| format!("invalid overlay file {}", config.display()))?;
    let runtime = tokio::runtime::Runtime::new().context("start the async runtime")?;
    runtime.block_on(serve(overlay, underlay, control))
}

async fn serve(overlay: Overlay, underlay: Ipv4Addr, control: Option<&Path>) -> anyhow::Result<()> {
    let settings = DataplaneConfig {
        port: overlay.port,
        mtu: overlay.mtu,
        inner_checksums: overlay.inner_checksums,
        ..DataplaneConfig::new(underlay)
    };
    let dataplane = Dataplane::start(&settings)
        .with_context(|| format!("bind the VXLAN port {underlay}:{}", overlay.port))?;
    for (vni, subnet) in &overlay.networks {
        dataplane.add_network(*vni, *subnet)?;
    }

    // Local endpoints, grouped by sandbox: one interface per network joined.
    let mut by_sandbox: BTreeMap<&str, Vec<&Endpoint>> = BTreeMap::new();
    for e in overlay.endpoints.iter().filter(|e| e.node == underlay) {
        let Some(name) = e.sandbox.as_deref() else {
            bail!("endpoint {} is on this node ({underlay}) but names no \"sandbox\"", e.ip)
        };
        by_sandbox.entry(name).or_default().push(e);
    }
    let mut sandboxes = Vec::new();
    let mut attached: Vec<(EndpointId, LocalEndpoint)> = Vec::new();
    for (name, endpoints) in by_sandbox {
        let specs: Vec<InterfaceSpec> = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| InterfaceSpec {
                name: format!("eth{i}"),
                ip: e.ip,
                prefix: overlay.networks[&e.vni].prefix(),
                mtu: overlay.mtu,
                queues: shoal_runtime::default_queues(),
            })
            .collect();
        let (sandbox, devices) = Sandbox::create(name, &specs, false)?;
        sandboxes.push(sandbox);
        for ((endpoint, spec), queues) in endpoints.iter().zip(&specs).zip(devices) {
            let id = dataplane.attach(endpoint.vni, endpoint.ip, queues)?;
            let local = LocalEndpoint {
                sandbox: name.to_owned(),
                interface: spec.name.clone(),
                vni: endpoint.vni.get(),
                ip: endpoint.ip,
            };
            attached.push((id, local));
        }
    }
    for e in overlay.endpoints.iter().filter(|e| e.node != underlay) {
        dataplane.set_remote(e.vni, e.ip, e.node)?;
    }
    tracing::info!(%underlay, port = overlay.port, local = attached.len(), "data plane ready");

    let listener = match control {
        Some(path) => {
            let _ = std::fs::remove_file(path); // a previous run's
            Some(UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?)
        }
        None => None,
    };
    let endpoints: Vec<LocalEndpoint> = attached.iter().map(|(_, e)| e.clone()).collect();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = accept(listener.as_ref()) => {
                let mut stream = accepted?;
                let stats = Stats { counters: dataplane.counters(), endpoints: endpoints.clone() };
                let body = serde_json::to_vec(&stats)?;
                let _ = stream.write_all(&body).await;
            }
        }
    }
    tracing::info!("stopping");
    for (id, _) in attached {
        dataplane.detach(id);
    }
    drop(dataplane);
    for sandbox in sandboxes {
        sandbox.remove()?;
    }
    if let Some(path) = control {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

async fn accept(listener: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// `shoal dataplane stats`: the counters and endpoints of a running data
/// plane.
pub fn stats(control: &Path) -> anyhow::Result<Stats> {
    let mut stream = std::os::unix::net::UnixStream::connect(control)
        .with_context(|| format!("connect to {}: is `shoal dataplane run` running?", control.display()))?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    serde_json::from_str(&body).context("unexpected answer from the data plane")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn parses_a_valid_file() {
        let overlay = parse(
            r#"{"networks":[{"vni":4096,"subnet":"10.0.1.0/24"}],
                "endpoints":[{"vni":4096,"ip":"10.0.1.2","node":"198.18.0.1","sandbox":"t1"}]}"#,
        )
        .unwrap();
        assert_eq!(overlay.port, 4789);
        assert_eq!(overlay.mtu, 1450);
        assert_eq!(overlay.endpoints.len(), 1);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(
            err(r#"{"networks":[{"vni":16777216,"subnet":"10.0.1.0/24"}],"endpoints":[]}"#)
                .contains("24 bits")
        );
        assert!(
            err(r#"{"networks":[{"vni":1,"subnet":"10.0.1.1/24"}],"endpoints":[]}"#)
                .contains("invalid subnet")
        );
        assert!(
            err(r#"{"networks":[],"endpoints":[{"vni":1,"ip":"10.0.1.2","node":"1.2.3.4"}]}"#)
                .contains("no network has")
        );
        assert!(
            err(r#"{"networks":[{"vni":1,"subnet":"10.0.1.0/24"}],"endpoints":[{"vni":1,"ip":"10.0.2.2","node":"1.2.3.4"}]}"#)
                .contains("outside its network")
        );
        assert!(err(r#"{"networks":[],"endpoints":[],"mtu":100}"#).contains("out of range"));
        assert!(err(r#"{"networks":[],"endpoints":[],"colour":"blue"}"#).contains("unknown field"));
    }
}
