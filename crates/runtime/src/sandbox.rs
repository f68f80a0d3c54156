//! A task sandbox: a network namespace with `lo` up, IPv6 off, TCP
//! timestamps counted from one base for every destination, and one TUN
//! interface per overlay network the task joins.
//!
//! The TUNs are created from a thread inside the namespace, so they live
//! there; their file descriptors go to the data plane, which reads and writes
//! them from the node's namespace. When the sandbox is removed and the
//! descriptors are closed, the namespace and its interfaces disappear.
//!
//! A TUN has as many queues as its [`InterfaceSpec::queues`] asks
//! (`IFF_MULTI_QUEUE` when more than one), each a descriptor of its own, so
//! that the data plane reads them on several cores. The kernel sends each
//! flow through one queue: the queue its packets were last written to.
//!
//! A sandbox whose task is to outlive the daemon (live restore) has
//! persistent TUNs: with no descriptor open they stay, with their addresses
//! and routes, and the packets the task sends meanwhile are dropped (TCP
//! sends them again). The next daemon [`reattach`](Sandbox::reattach)es
//! to them by name. They go with the namespace, once its last process ends.

use std::io;
use std::net::Ipv4Addr;

use tun_rs::{DeviceBuilder, SyncDevice};

use crate::netns::{NetNs, NetnsError};
use crate::sys;

/// One overlay interface inside a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// Interface name inside the sandbox (`eth0`, `eth1`, ...).
    pub name: String,
    /// The task's address on the network.
    pub ip: Ipv4Addr,
    /// The network's prefix length: the kernel adds the subnet route.
    pub prefix: u8,
    /// The overlay MTU.
    pub mtu: u16,
    /// How many queues the TUN has (at least one); see [`default_queues`].
    pub queues: usize,
}

/// The queues a TUN gets by default: one per core, at most four.
pub fn default_queues() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(4)
}

/// One TUN's queues, the first the one it was created with.
pub type TunQueues = Vec<SyncDevice>;

/// Why a sandbox could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The namespace could not be created or entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Setting up inside the namespace failed.
    #[error("sandbox {sandbox}: {what}: {source}")]
    Setup {
        /// The sandbox's name.
        sandbox: String,
        /// The step that failed.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// A task's network namespace. Removing it (or dropping it) deletes the
/// namespace's name; the TUN devices handed out at creation keep the
/// namespace alive until they are closed too.
#[derive(Debug)]
pub struct Sandbox {
    netns: Option<NetNs>,
}

impl Sandbox {
    /// Creates the namespace `name`, brings `lo` up, and creates one TUN per
    /// interface with its address, prefix route, MTU and queues, with TSO/GSO
    /// offload enabled. IPv6 is disabled inside until the overlay carries it.
    /// With `persistent`, the TUNs outlive their descriptors.
    pub fn create(
        name: &str,
        interfaces: &[InterfaceSpec],
        persistent: bool,
    ) -> Result<(Sandbox, Vec<TunQueues>), SandboxError> {
        let netns = NetNs::create(name)?;
        let setup = netns.run(|| setup_inside(name, interfaces, persistent));
        match setup {
            Ok(Ok(devices)) => Ok((Sandbox { netns: Some(netns) }, devices)),
            Ok(Err(e)) => {
                let _ = netns.delete();
                Err(e)
            }
            Err(e) => {
                let _ = netns.delete();
                Err(e.into())
            }
        }
    }

    /// Opens the existing sandbox `name` (left by a daemon whose task
    /// outlived it) and attaches to its persistent TUNs again, one per
    /// interface, in order. Nothing in the namespace is changed; an
    /// interface that is gone is an error. A TUN made with one queue (by
    /// an older daemon) is taken back with one.
    pub fn reattach(
        name: &str,
        interfaces: &[InterfaceSpec],
    ) -> Result<(Sandbox, Vec<TunQueues>), SandboxError> {
        let netns = NetNs::open(name)?;
        let fail = |what: String| {
            move |source: io::Error| SandboxError::Setup { sandbox: name.into(), what, source }
        };
        let devices = netns.run(|| {
            interfaces
                .iter()
                .map(|iface| {
                    if !std::path::Path::new("/sys/class/net").join(&iface.name).exists() {
                        let gone = io::Error::new(io::ErrorKind::NotFound, "no such interface");
                        return Err(fail(format!("find TUN {}", iface.name))(gone));
                    }
                    tun(iface, true).map_err(fail(format!("reattach TUN {}", iface.name)))
                })
                .collect::<Result<Vec<_>, _>>()
        })??;
        Ok((Sandbox { netns: Some(netns) }, devices))
    }

    /// Forgets the sandbox without deleting its namespace: a task that
    /// outlives the daemon keeps it.
    pub fn keep(mut self) {
        self.netns.take();
    }

    /// The sandbox's namespace.
    pub fn netns(&self) -> &NetNs {
        self.netns.as_ref().expect("present until removed")
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        self.netns().name()
    }

    /// Deletes the namespace's name.
    pub fn remove(mut self) -> Result<(), NetnsError> {
        self.netns.take().map_or(Ok(()), NetNs::delete)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(netns) = self.netns.take() {
            let name = netns.name().to_owned();
            if let Err(e) = netns.delete() {
                tracing::warn!(sandbox = %name, error = %e, "could not delete sandbox namespace");
            }
        }
    }
}

/// Makes (or attaches to) the TUN `iface.name` in the current namespace,
/// with its address, prefix route and MTU, offload on, and its queues.
fn tun(iface: &InterfaceSpec, persistent: bool) -> io::Result<TunQueues> {
    let build = |multi_queue: bool| {
        DeviceBuilder::new()
            .name(&iface.name)
            .ipv4(iface.ip, iface.prefix, None)
            .mtu(iface.mtu)
            .offload(true)
            .multi_queue(multi_queue)
            .build_sync()
    };
    let multi_queue = iface.queues > 1;
    let (first, count) = match build(multi_queue) {
        Ok(device) => (device, iface.queues.max(1)),
        // An existing TUN made with one queue refuses a multi-queue attach.
        Err(e) if multi_queue && e.raw_os_error() == Some(nix::libc::EINVAL) => (build(false)?, 1),
        Err(e) => return Err(e),
    };
    if persistent {
        first.persist()?;
    }
    let mut queues = Vec::with_capacity(count);
    queues.push(first);
    while queues.len() < count {
        let queue = queues[0].try_clone()?;
        queues.push(queue);
    }
    Ok(queues)
}

fn setup_inside(
    sandbox: &str,
    interfaces: &[InterfaceSpec],
    persistent: bool,
) -> Result<Vec<TunQueues>, SandboxError> {
    let fail =
        |what: String| move |source: io::Error| SandboxError::Setup { sandbox: sandbox.into(), what, source };
    sys::set_link_up("lo").map_err(fail("bring lo up".into()))?;
    for key in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
        if std::path::Path::new(&path).exists() {
            std::fs::write(&path, "1").map_err(fail(format!("write {path}")))?;
        }
    }
    // TCP timestamps without a per-destination offset. A client that
    // connects to a service's VIP and, earlier, straight to the same task
    // from the same port (the routing mesh does, and so can any task) sends
    // timestamps from one base both times; with Linux's offset per
    // destination address the task's TIME_WAIT of the first connection
    // would refuse the second's SYN, a 1 s retransmit.
    let timestamps = "/proc/sys/net/ipv4/tcp_timestamps";
    std::fs::write(timestamps, "2").map_err(fail(format!("write {timestamps}")))?;
    interfaces
        .iter()
        .map(|iface| {
            tun(iface, persistent)
                .map_err(fail(format!("create TUN {} with {}/{}", iface.name, iface.ip, iface.prefix)))
        })
        .collect()
}
