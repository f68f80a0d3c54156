//! The overlay data plane, seen from outside: tasks in sandboxes on different
//! hosts reach each other over Shoal's userspace VXLAN, networks stay apart,
//! forged and malformed traffic is dropped and counted, the wire format
//! interoperates with the Linux kernel's vxlan device, and nothing is left
//! behind.

#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use etherparse::PacketBuilder;
use netns_tests::{
    ForeignEndpoint, Overlay, TaskSpec, own_links, ping_from, require_root, tcp_transfer, tx_packets,
    wait_until,
};
use shoal_dataplane::DropReason;
use shoal_lab::{Lab, ip};
use shoal_runtime::NetNs;
use shoal_wire::ENCAP_HEADROOM;

const VNI: u32 = 4096;
const SUBNET: &str = "10.0.1.0/24";
const TEN_MB: usize = 10 << 20;

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 1, last)
}

/// Two tasks on each of `hosts` hosts, all on one network: t1, t2 on h1;
/// t3, t4 on h2; ...
fn one_network(hosts: usize) -> Overlay {
    const NAMES: [&str; 6] = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let tasks: Vec<TaskSpec> =
        (0..hosts * 2).map(|i| TaskSpec::new(NAMES[i], i / 2, VNI, addr(2 + i as u8))).collect();
    Overlay::start(hosts, &[(VNI, SUBNET)], &tasks, &[])
}

#[test]
fn two_hosts_ping_and_transfer_across_and_within_hosts() {
    let overlay = one_network(2);
    // Across hosts, both ways, and within a host.
    assert!(overlay.ping("t1", overlay.ip("t3"), 3), "t1 -> t3 (h1 -> h2):\n{}", overlay.log(0));
    assert!(overlay.ping("t4", overlay.ip("t2"), 3), "t4 -> t2 (h2 -> h1)");
    assert!(overlay.ping("t1", overlay.ip("t2"), 3), "t1 -> t2 (within h1)");
    tcp_transfer(&overlay.sandbox("t1"), &overlay.sandbox("t3"), overlay.ip("t3"), TEN_MB);
    tcp_transfer(&overlay.sandbox("t4"), &overlay.sandbox("t1"), overlay.ip("t1"), TEN_MB);
    tcp_transfer(&overlay.sandbox("t2"), &overlay.sandbox("t1"), overlay.ip("t1"), TEN_MB);

    let h1 = overlay.counters(0);
    assert!(h1.encapsulated > 0 && h1.decapsulated > 0, "{h1:?}");
    assert!(h1.delivered_locally > 0, "within-host traffic is delivered without VXLAN: {h1:?}");

    // Every read the kernel handed to Shoal was processed: none lost between
    // the TUN and the forwarding decision.
    for (host, tasks) in [(0, ["t1", "t2"]), (1, ["t3", "t4"])] {
        let kernel = || tasks.iter().map(|t| tx_packets(&overlay.sandbox(t), "eth0")).sum::<u64>();
        let accounted = wait_until(Duration::from_secs(5), || overlay.counters(host).tun_reads == kernel());
        assert!(
            accounted,
            "h{}: kernel handed over {} reads, shoal processed {}",
            host + 1,
            kernel(),
            overlay.counters(host).tun_reads
        );
    }
}

#[test]
fn three_hosts_full_mesh() {
    let overlay = one_network(3);
    for (from, to) in [("t1", "t5"), ("t5", "t1"), ("t3", "t6"), ("t6", "t4"), ("t2", "t3")] {
        assert!(overlay.ping(from, overlay.ip(to), 2), "{from} -> {to}");
    }
    tcp_transfer(&overlay.sandbox("t1"), &overlay.sandbox("t5"), overlay.ip("t5"), TEN_MB);
    tcp_transfer(&overlay.sandbox("t6"), &overlay.sandbox("t3"), overlay.ip("t3"), TEN_MB);
}

#[test]
fn networks_with_different_vnis_are_isolated() {
    // Two networks with the same subnet on the same hosts: only the VNI tells
    // them apart. "a*" tasks are on VNI 4096, "b*" on 4097; a1/b1 share the
    // address 10.0.1.2 and a2/b2 share 10.0.1.3. A third network, 10.0.2.0/24,
    // holds c1, on h2.
    let tasks = [
        TaskSpec::new("a1", 0, 4096, addr(2)),
        TaskSpec::new("b1", 0, 4097, addr(2)),
        TaskSpec::new("a2", 1, 4096, addr(3)),
        TaskSpec::new("b2", 1, 4097, addr(3)),
        TaskSpec::new("c1", 1, 4098, Ipv4Addr::new(10, 0, 2, 2)),
    ];
    let networks = [(4096, SUBNET), (4097, SUBNET), (4098, "10.0.2.0/24")];
    let overlay = Overlay::start(2, &networks, &tasks, &[]);

    assert!(overlay.ping("a1", addr(3), 2));
    assert!(overlay.ping("b1", addr(3), 2));
    // A listener only in b2: a1's connection to the same address must land in
    // a2 (which has none) and fail, while b1's succeeds.
    tcp_transfer(&overlay.sandbox("b1"), &overlay.sandbox("b2"), addr(3), 1 << 20);
    let listener = NetNs::open(&overlay.sandbox("b2"))
        .unwrap()
        .run(|| std::net::TcpListener::bind((addr(3), 7000)))
        .unwrap()
        .unwrap();
    let refused = NetNs::open(&overlay.sandbox("a1"))
        .unwrap()
        .run(|| std::net::TcpStream::connect_timeout(&(addr(3), 7000).into(), Duration::from_secs(3)))
        .unwrap();
    assert!(refused.is_err(), "a1 reached b2's listener across VNIs");
    drop(listener);

    // A task that routes another network's subnet through its interface is
    // stopped at its own node and counted.
    let before = overlay.dropped(0, DropReason::CrossNetwork);
    ip(&overlay.sandbox("a1"), &["route", "add", "10.0.2.0/24", "dev", "eth0"]).unwrap();
    assert!(!overlay.ping("a1", Ipv4Addr::new(10, 0, 2, 2), 2), "a1 reached c1 on another network");
    assert!(overlay.dropped(0, DropReason::CrossNetwork) >= before + 2);
}

#[test]
fn task_on_two_networks_reaches_both() {
    let tasks = [
        TaskSpec {
            name: "both",
            host: 0,
            attachments: vec![(4096, addr(2)), (4097, Ipv4Addr::new(10, 0, 2, 2))],
        },
        TaskSpec::new("a", 1, 4096, addr(3)),
        TaskSpec::new("b", 1, 4097, Ipv4Addr::new(10, 0, 2, 3)),
    ];
    let overlay = Overlay::start(2, &[(4096, SUBNET), (4097, "10.0.2.0/24")], &tasks, &[]);
    assert!(overlay.ping("both", addr(3), 2));
    assert!(overlay.ping("both", Ipv4Addr::new(10, 0, 2, 3), 2));
    assert!(overlay.ping("b", Ipv4Addr::new(10, 0, 2, 2), 2));
    assert!(!overlay.ping("a", Ipv4Addr::new(10, 0, 2, 3), 1), "a has no route to the other network");
}

#[test]
fn forged_source_is_dropped_and_counted() {
    let overlay = one_network(2);
    let t1 = overlay.sandbox("t1");
    assert!(overlay.ping("t1", overlay.ip("t3"), 1));
    ip(&t1, &["addr", "add", "10.0.1.99/32", "dev", "eth0"]).unwrap();
    let before = overlay.dropped(0, DropReason::SpoofedSource);
    let out = Lab::run_in(&t1, "ping", &["-c", "3", "-i", "0.2", "-W", "1", "-I", "10.0.1.99", "10.0.1.4"])
        .unwrap();
    assert!(!out.status.success(), "a ping with a forged source got answers");
    let after = overlay.dropped(0, DropReason::SpoofedSource);
    assert!(after >= before + 3, "spoofed_source went from {before} to {after}");
    assert_eq!(overlay.counters(1).decapsulated, overlay.counters(1).decapsulated, "stats readable");
    // The task's real address still works.
    assert!(overlay.ping("t1", overlay.ip("t3"), 1));
}

#[test]
fn kernel_vxlan_interoperates_in_both_directions() {
    // h1 runs Shoal with task t1 (10.0.1.2); h2 runs no Shoal, only a kernel
    // vxlan device holding 10.0.1.3, with static FDB and neighbour entries.
    let kernel_ip = addr(3);
    let overlay = Overlay::start(
        2,
        &[(VNI, SUBNET)],
        &[TaskSpec::new("t1", 0, VNI, addr(2))],
        &[ForeignEndpoint { host: 1, vni: VNI, ip: kernel_ip }],
    );
    let h1 = overlay.lab.host(0).clone();
    let h2 = overlay.lab.host(1).clone();
    let local = h2.underlay.to_string();
    ip(
        &h2.netns,
        &[
            "link",
            "add",
            "vx0",
            "type",
            "vxlan",
            "id",
            "4096",
            "local",
            &local,
            "dstport",
            "4789",
            "nolearning",
        ],
    )
    .unwrap();
    ip(&h2.netns, &["link", "set", "vx0", "address", "02:42:0a:00:01:03", "mtu", "1450", "up"]).unwrap();
    ip(&h2.netns, &["addr", "add", "10.0.1.3/24", "dev", "vx0"]).unwrap();
    // Over veth no NIC ever completes a checksum the kernel left partial, so
    // the inner TCP checksum of kernel-encapsulated frames would reach Shoal's
    // socket unfinished. Have the kernel compute it before encapsulating, as
    // it must for any device without checksum offload.
    let out = Lab::run_in(&h2.netns, "ethtool", &["-K", "vx0", "tx", "off"]).unwrap();
    assert!(out.status.success(), "ethtool: {}", String::from_utf8_lossy(&out.stderr));
    let fdb = ["fdb", "append", "02:42:0a:00:01:02", "dev", "vx0", "dst", &h1.underlay.to_string()];
    let out = std::process::Command::new("bridge").args(["-n", &h2.netns]).args(fdb).output().unwrap();
    assert!(out.status.success(), "bridge fdb: {}", String::from_utf8_lossy(&out.stderr));
    ip(
        &h2.netns,
        &["neigh", "add", "10.0.1.2", "lladdr", "02:42:0a:00:01:02", "dev", "vx0", "nud", "permanent"],
    )
    .unwrap();

    assert!(overlay.ping("t1", kernel_ip, 3), "Shoal -> kernel vxlan:\n{}", overlay.log(0));
    assert!(ping_from(&h2.netns, addr(2), 3), "kernel vxlan -> Shoal");
    tcp_transfer(&overlay.sandbox("t1"), &h2.netns, kernel_ip, TEN_MB);
    tcp_transfer(&h2.netns, &overlay.sandbox("t1"), addr(2), TEN_MB);
    let counters = overlay.counters(0);
    assert!(counters.encapsulated > 1000 && counters.decapsulated > 1000, "{counters:?}");
}

/// A VXLAN datagram with a well-formed inner IPv4/UDP packet of `payload`
/// bytes from t3 (10.0.1.4) to t1 (10.0.1.2) on `vni`, with VXLAN flags `flags`.
fn vxlan_datagram(vni: u32, flags: u8, payload: usize) -> Vec<u8> {
    let mut datagram = vec![0u8; ENCAP_HEADROOM];
    datagram[0] = flags;
    datagram[4..7].copy_from_slice(&vni.to_be_bytes()[1..]);
    datagram[8..14].copy_from_slice(&[0x02, 0x42, 10, 0, 1, 2]);
    datagram[14..20].copy_from_slice(&[0x02, 0x42, 10, 0, 1, 4]);
    datagram[20..22].copy_from_slice(&[0x08, 0x00]);
    let builder = PacketBuilder::ipv4([10, 0, 1, 4], [10, 0, 1, 2], 64).udp(1000, 2000);
    builder.write(&mut datagram, &vec![0xab; payload]).unwrap();
    datagram
}

#[test]
fn garbage_on_the_vxlan_port_is_dropped_and_counted() {
    let overlay = one_network(2);
    let h1 = overlay.lab.host(0).clone();
    let h2 = overlay.lab.host(1).clone();
    let target = (h1.underlay, 4789);
    let socket = NetNs::open(&h2.netns).unwrap().run(|| UdpSocket::bind((h2.underlay, 0))).unwrap().unwrap();
    let send = |datagram: &[u8], times: usize| {
        for _ in 0..times {
            socket.send_to(datagram, target).unwrap();
        }
    };
    let settle = |reason: DropReason, expected: u64| {
        let ok = wait_until(Duration::from_secs(5), || overlay.dropped(0, reason) >= expected);
        assert!(ok, "{} reached {} of {expected}", reason.name(), overlay.dropped(0, reason));
    };
    assert_eq!(overlay.dropped(0, DropReason::Truncated), 0);

    send(&[0x08, 0, 0], 10);
    settle(DropReason::Truncated, 10);
    send(&vxlan_datagram(VNI, 0x08, 16)[..15], 10); // VXLAN header, half an Ethernet header
    settle(DropReason::Truncated, 20);
    send(&vxlan_datagram(VNI, 0x00, 16), 10);
    settle(DropReason::BadVxlanFlags, 10);
    send(&vxlan_datagram(9999, 0x08, 16), 10);
    settle(DropReason::UnknownVni, 10);
    send(&vxlan_datagram(VNI, 0x08, 3000), 5); // fragmented on the underlay, reassembled, too big inside
    send(&vxlan_datagram(VNI, 0x08, 60_000), 5);
    settle(DropReason::Oversized, 10);
    let mut bad_ip = vxlan_datagram(VNI, 0x08, 16);
    bad_ip[ENCAP_HEADROOM] = 0x4f; // IHL 15: header longer than the packet
    send(&bad_ip, 10);
    settle(DropReason::Malformed, 10);

    // Random bytes: each datagram is dropped under some reason.
    let total = |o: &Overlay| o.counters(0).drops.values().sum::<u64>();
    let before = total(&overlay);
    for (i, len) in (0..200).map(|i| (i, 1 + (i * 37) % 1400)) {
        send(&netns_tests::pattern(len, i as u64 + 1), 1);
    }
    assert!(
        wait_until(Duration::from_secs(5), || total(&overlay) >= before + 200),
        "only {} of 200 random datagrams were counted",
        total(&overlay) - before
    );
    assert_eq!(overlay.counters(0).decapsulated, overlay.counters(0).decapsulated);

    // Forwarding goes on.
    assert!(overlay.ping("t3", overlay.ip("t1"), 2), "forwarding stopped after garbage:\n{}", overlay.log(0));
    assert!(overlay.lab.is_running(overlay.pid(0)));
}

#[test]
fn teardown_leaves_no_namespace_link_or_process() {
    require_root();
    let links_before = own_links();
    let mut overlay = one_network(2);
    assert!(overlay.ping("t1", overlay.ip("t3"), 1));
    let sandboxes =
        [overlay.sandbox("t1"), overlay.sandbox("t2"), overlay.sandbox("t3"), overlay.sandbox("t4")];
    let pids = [overlay.pid(0), overlay.pid(1)];

    // A graceful stop removes the node's own sandboxes.
    assert!(overlay.stop_node(0), "shoal exited with an error:\n{}", overlay.log(0));
    assert!(!NetNs::exists(&sandboxes[0]) && !NetNs::exists(&sandboxes[1]));
    assert!(NetNs::exists(&sandboxes[2]), "the other node's sandboxes are untouched");
    assert!(overlay.stop_node(1));
    assert!(sandboxes.iter().all(|s| !NetNs::exists(s)));

    let name = overlay.lab.name().to_owned();
    drop(overlay);
    let left: Vec<String> = NetNs::list().into_iter().filter(|n| n.starts_with(&name)).collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    for pid in pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("dataplane"), "shoal {pid} still runs");
    }
    assert_eq!(own_links(), links_before, "links of the test's own namespace changed");
}
