//! Sandboxes on the real kernel: namespaces, `lo`, TUN address, MTU, route,
//! TCP timestamps, and teardown. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;

use shoal_runtime::{InterfaceSpec, NetNs, Sandbox};

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests create network namespaces and TUN devices: run them as root"
    );
}

fn ip(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip").args(["-n", netns]).args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sandbox_has_tun_with_address_mtu_and_route_then_vanishes() {
    require_root();
    let name = format!("shoal-rt-{}-a", std::process::id());
    let spec = InterfaceSpec {
        name: "eth0".into(),
        ip: Ipv4Addr::new(10, 0, 1, 2),
        prefix: 24,
        mtu: 1450,
        queues: 2,
    };
    let timestamps = || std::fs::read_to_string("/proc/sys/net/ipv4/tcp_timestamps").unwrap();
    let own_timestamps = timestamps();
    let (sandbox, devices) = Sandbox::create(&name, &[spec], false).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].len(), 2, "two queues");

    let link = ip(&name, &["-d", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains("multi_queue"), "{link}");
    assert!(link.contains(",UP"), "{link}");
    assert!(ip(&name, &["link", "show", "lo"]).contains(",UP"));
    assert!(ip(&name, &["-4", "addr", "show", "eth0"]).contains("inet 10.0.1.2/24"));
    assert!(ip(&name, &["route"]).contains("10.0.1.0/24 dev eth0"));
    assert!(NetNs::list().contains(&name));
    // Timestamps from one base for every destination; the node's own
    // setting is untouched.
    assert_eq!(sandbox.netns().run(timestamps).unwrap().trim(), "2");
    assert_eq!(timestamps(), own_timestamps, "the test's own namespace changed");

    assert!(matches!(Sandbox::create(&name, &[], false), Err(shoal_runtime::SandboxError::Netns(_))));

    sandbox.remove().unwrap();
    drop(devices);
    assert!(!NetNs::exists(&name));
}

#[test]
fn run_executes_inside_the_namespace() {
    require_root();
    let name = format!("shoal-rt-{}-b", std::process::id());
    let netns = NetNs::create(&name).unwrap();
    // Deletes the name even if an assertion below fails.
    let _cleanup = Cleanup(name.clone());
    let names = netns
        .run(|| {
            let list = nix::net::if_::if_nameindex().expect("list interfaces");
            list.iter().map(|i| i.name().to_string_lossy().into_owned()).collect::<Vec<_>>()
        })
        .unwrap();
    assert_eq!(names, ["lo"], "a fresh namespace holds only lo");
    netns.delete().unwrap();
    assert!(!NetNs::exists(&name));
    assert!(matches!(NetNs::open(&name), Err(shoal_runtime::NetnsError::NotFound(_))));
}

/// Sends a UDP datagram holding `text` from inside `sandbox` and waits for
/// it on any of `queues`.
fn carried(sandbox: &Sandbox, from: &str, queues: &[tun_rs::SyncDevice], text: &[u8]) -> bool {
    sandbox
        .netns()
        .run(|| {
            let s = std::net::UdpSocket::bind(from).unwrap();
            s.send_to(text, "10.0.3.9:9").unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..50 {
        for queue in queues {
            queue.set_nonblocking(true).unwrap();
            if let Ok(n) = queue.recv(&mut buf)
                && buf[..n].windows(text.len()).any(|w| w == text)
            {
                return true;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Deletes a namespace by name when dropped, also when a test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = NetNs::delete_by_name(&self.0);
    }
}

/// Makes sandbox `name` with a persistent `eth0` of `queues` queues, then
/// leaves it as a daemon that exits does: descriptors closed, namespace
/// kept. Returns the interface.
fn left_by_a_daemon(name: &str, queues: usize) -> InterfaceSpec {
    let spec =
        InterfaceSpec { name: "eth0".into(), ip: Ipv4Addr::new(10, 0, 3, 2), prefix: 24, mtu: 1400, queues };
    let (sandbox, devices) = Sandbox::create(name, std::slice::from_ref(&spec), true).unwrap();
    drop(devices);
    sandbox.keep();
    spec
}

#[test]
fn persistent_tuns_outlive_their_descriptors_and_are_reattached() {
    require_root();
    let name = format!("shoal-rt-{}-c", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let spec = left_by_a_daemon(&name, 2);
    assert!(ip(&name, &["-4", "addr", "show", "eth0"]).contains("inet 10.0.3.2/24"), "the TUN stayed");

    let (sandbox, devices) = Sandbox::reattach(&name, std::slice::from_ref(&spec)).unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].len(), 2, "both queues again");
    let link = ip(&name, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    // A packet the namespace sends reaches a reattached descriptor.
    assert!(carried(&sandbox, "10.0.3.2:0", &devices[0], b"after"), "the reattached TUN carries packets");

    let gone = InterfaceSpec { name: "eth7".into(), ..spec };
    let Err(err) = Sandbox::reattach(&name, &[gone]) else { panic!("eth7 does not exist") };
    let err = err.to_string();
    assert!(err.contains("eth7"), "{err}");
    drop(devices);
    sandbox.remove().unwrap();
    assert!(!NetNs::exists(&name));
}

#[test]
fn a_single_queue_tun_is_reattached_with_one_queue() {
    require_root();
    let name = format!("shoal-rt-{}-d", std::process::id());
    let _cleanup = Cleanup(name.clone());
    // As an older daemon made it: one queue.
    let spec = left_by_a_daemon(&name, 1);
    assert!(!ip(&name, &["-d", "link", "show", "eth0"]).contains("multi_queue"));

    let wants_more = InterfaceSpec { queues: 4, ..spec };
    let (sandbox, devices) = Sandbox::reattach(&name, &[wants_more]).unwrap();
    assert_eq!(devices[0].len(), 1, "the TUN keeps the one queue it was made with");
    assert!(carried(&sandbox, "10.0.3.2:0", &devices[0], b"older"), "and carries packets");
    drop(devices);
    sandbox.remove().unwrap();
}
