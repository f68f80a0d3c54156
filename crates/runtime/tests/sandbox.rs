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
    let spec = InterfaceSpec { name: "eth0".into(), ip: Ipv4Addr::new(10, 0, 1, 2), prefix: 24, mtu: 1450 };
    let timestamps = || std::fs::read_to_string("/proc/sys/net/ipv4/tcp_timestamps").unwrap();
    let own_timestamps = timestamps();
    let (sandbox, devices) = Sandbox::create(&name, &[spec], false).unwrap();
    assert_eq!(devices.len(), 1);

    let link = ip(&name, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
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
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = NetNs::delete_by_name(&self.0);
        }
    }
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

#[test]
fn persistent_tuns_outlive_their_descriptors_and_are_reattached() {
    require_root();
    let name = format!("shoal-rt-{}-c", std::process::id());
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = NetNs::delete_by_name(&self.0);
        }
    }
    let _cleanup = Cleanup(name.clone());
    let spec = InterfaceSpec { name: "eth0".into(), ip: Ipv4Addr::new(10, 0, 3, 2), prefix: 24, mtu: 1400 };
    let (sandbox, devices) = Sandbox::create(&name, std::slice::from_ref(&spec), true).unwrap();
    // The daemon goes: its descriptors close, the namespace's name stays.
    drop(devices);
    sandbox.keep();
    assert!(ip(&name, &["-4", "addr", "show", "eth0"]).contains("inet 10.0.3.2/24"), "the TUN stayed");

    let (sandbox, devices) = Sandbox::reattach(&name, std::slice::from_ref(&spec)).unwrap();
    assert_eq!(devices.len(), 1);
    let link = ip(&name, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    // A packet the namespace sends reaches the reattached descriptor.
    let device = &devices[0];
    sandbox
        .netns()
        .run(|| {
            let s = std::net::UdpSocket::bind("10.0.3.2:0").unwrap();
            s.send_to(b"after", "10.0.3.9:9").unwrap();
        })
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut seen = false;
    for _ in 0..50 {
        device.set_nonblocking(true).unwrap();
        match device.recv(&mut buf) {
            Ok(n) if buf[..n].windows(5).any(|w| w == b"after") => {
                seen = true;
                break;
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    assert!(seen, "the reattached TUN carries the namespace's packets");

    let gone = InterfaceSpec { name: "eth7".into(), ..spec };
    let Err(err) = Sandbox::reattach(&name, &[gone]) else { panic!("eth7 does not exist") };
    let err = err.to_string();
    assert!(err.contains("eth7"), "{err}");
    drop(devices);
    sandbox.remove().unwrap();
    assert!(!NetNs::exists(&name));
}
