//! Connection tracking on a virtual clock: timeouts by state, sweeps, the
//! bound.

use super::tests::{EP1, EP2, NODE_B, T1, T2, T3, VNI};
use super::tests_vip::{
    ACK, FIN, RST, SYN, VIP, active, backend_of, from_node_b, node_a_with, remote, send, service, tcp, udp,
    with_vip,
};
use super::*;
use proptest::prelude::*;

const CLIENT: (Ipv4Addr, u16) = (T1, 40_000);
const SERVER: (Ipv4Addr, u16) = (VIP, 80);
const SECOND: u64 = 1_000;

/// Node A with one backend, T3 on node B.
fn node_a() -> Tables {
    with_vip(Policy::RoundRobin, active([T3]))
}

/// A packet from T3 to the client, as node A receives it; whether it was
/// taken for a reply.
fn reply(a: &Tables, flags: u8) -> bool {
    let datagram = from_node_b(&tcp((T3, 80), CLIENT, flags));
    matches!(a.ingress(NODE_B, &datagram), Ingress::Deliver { nat: Some(_), .. })
}

fn handshake(a: &Tables) {
    assert_eq!(backend_of(a, EP1, &tcp(CLIENT, SERVER, SYN)), T3);
    assert!(reply(a, SYN | ACK));
    assert_eq!(backend_of(a, EP1, &tcp(CLIENT, SERVER, ACK)), T3);
}

/// Moves the clock to `ms` and sweeps.
fn at(a: &Tables, ms: u64) {
    a.conntrack().advance(ms);
    a.sweep();
}

#[test]
fn an_idle_established_flow_survives_two_hours_of_sweeps() {
    let a = node_a();
    handshake(&a);
    for second in 1..=2 * 60 * 60 {
        at(&a, second * SECOND);
    }
    assert_eq!(a.conntrack().len(), 1);
    assert_eq!(backend_of(&a, EP1, &tcp(CLIENT, SERVER, ACK)), T3);
    assert!(reply(&a, ACK), "replies still come from the VIP");
    let c = a.conntrack().counters();
    assert_eq!((c.created, c.expired, c.evicted), (1, 0, 0));
    // A day without a packet is too long, though.
    at(&a, (2 * 60 * 60 + 24 * 60 * 60 + 1) * SECOND);
    assert_eq!(a.conntrack().len(), 0);
}

#[test]
fn a_closed_flow_expires_after_ten_seconds() {
    let a = node_a();
    handshake(&a);
    backend_of(&a, EP1, &tcp(CLIENT, SERVER, FIN | ACK));
    // Half closed: the backend may still send for a while.
    at(&a, 11 * SECOND);
    assert_eq!(a.conntrack().len(), 1);
    assert!(reply(&a, FIN | ACK));
    at(&a, 20 * SECOND);
    assert_eq!(a.conntrack().len(), 1);
    at(&a, 22 * SECOND);
    assert_eq!(a.conntrack().len(), 0);
    assert_eq!(a.conntrack().counters().expired, 1);
    assert!(!reply(&a, ACK), "a late packet of a gone flow is not NAT'ed");
}

#[test]
fn half_closed_and_reset_flows_time_out_by_their_state() {
    let a = node_a();
    handshake(&a);
    backend_of(&a, EP1, &tcp(CLIENT, SERVER, FIN | ACK));
    at(&a, 119 * SECOND);
    assert_eq!(a.conntrack().len(), 1);
    at(&a, 121 * SECOND);
    assert_eq!(a.conntrack().len(), 0);
    handshake(&a);
    assert!(reply(&a, RST));
    at(&a, 132 * SECOND);
    assert_eq!(a.conntrack().len(), 0);
}

#[test]
fn unreplied_flows_time_out_in_thirty_seconds_replied_udp_in_three_minutes() {
    let a = with_vip(Policy::RoundRobin, active([T2]));
    assert_eq!(backend_of(&a, EP1, &tcp(CLIENT, SERVER, SYN)), T2);
    assert_eq!(backend_of(&a, EP1, &udp((T1, 5353), (VIP, 53))), T2);
    assert_eq!(backend_of(&a, EP1, &udp((T1, 5354), (VIP, 53))), T2);
    let (_, answer) = send(&a, EP2, &udp((T2, 53), (T1, 5354)));
    assert_eq!(super::tests_vip::addrs(&answer).0, VIP);
    at(&a, 29 * SECOND);
    assert_eq!(a.conntrack().len(), 3);
    at(&a, 31 * SECOND);
    assert_eq!(a.conntrack().len(), 1, "only the answered UDP flow is left");
    at(&a, 179 * SECOND);
    assert_eq!(a.conntrack().len(), 1);
    at(&a, 181 * SECOND);
    assert_eq!(a.conntrack().len(), 0);
}

#[test]
fn an_expired_flow_is_not_revived_before_the_sweep() {
    let a = with_vip(Policy::RoundRobin, active([remote(0), remote(1)]));
    assert_eq!(backend_of(&a, EP1, &udp((T1, 5353), (VIP, 53))), remote(0));
    a.conntrack().advance(31 * SECOND);
    assert_eq!(backend_of(&a, EP1, &udp((T1, 5353), (VIP, 53))), remote(1), "a new flow, scheduled anew");
    let c = a.conntrack().counters();
    assert_eq!((c.created, c.expired, c.entries), (2, 1, 1));
}

#[test]
fn a_syn_on_a_closed_flows_ports_starts_a_new_flow() {
    let a = with_vip(Policy::RoundRobin, active([T3, remote(0)]));
    handshake(&a);
    assert!(reply(&a, RST));
    assert_eq!(backend_of(&a, EP1, &tcp(CLIENT, SERVER, SYN)), remote(0));
    assert_eq!(a.conntrack().counters().created, 2);
}

#[test]
fn a_full_table_evicts_flows_closest_to_their_timeout_first() {
    let conntrack = Arc::new(Conntrack::new(64, 1));
    let a = node_a_with(conntrack.clone(), service(Policy::RoundRobin, active([T2])));
    for port in 0..32 {
        assert_eq!(backend_of(&a, EP1, &udp((T1, port), (VIP, 53))), T2);
        let _ = send(&a, EP2, &udp((T2, 53), (T1, port)));
    }
    for port in 100..1_100 {
        let (verdict, _) = send(&a, EP1, &tcp((T1, port), (VIP, 80), SYN));
        assert!(matches!(verdict, Egress::Local { to: EP2, .. }), "{verdict:?}");
        assert!(conntrack.len() <= 64);
    }
    let c = conntrack.counters();
    assert_eq!((c.created, c.entries), (1_032, 64));
    assert_eq!(c.evicted, 1_032 - 64);
    // The 32 answered UDP flows are all still there.
    for port in 0..32 {
        let (_, answer) = send(&a, EP2, &udp((T2, 53), (T1, port)));
        assert_eq!(super::tests_vip::addrs(&answer).0, VIP, "flow {port}");
    }
    assert_eq!(conntrack.counters().created, 1_032);
}

/// What a random sequence does to node A's table.
#[derive(Debug, Clone)]
enum Op {
    /// A client's TCP packet to the VIP.
    Tcp {
        second_client: bool,
        port: u16,
        flags: u8,
    },
    /// A client's UDP packet to the VIP.
    Udp {
        port: u16,
    },
    /// A backend's packet to T1.
    Reply {
        backend: u8,
        port: u16,
        tcp: bool,
        flags: u8,
    },
    Advance(u64),
    Sweep,
    /// Backends 0..3 listed if their bit is set, draining if also in the
    /// high nibble; a policy; client-IP affinity or not.
    SetBackends(u8, Policy, bool),
}

fn op() -> impl Strategy<Value = Op> {
    let flags = prop_oneof![Just(SYN), Just(ACK), Just(FIN | ACK), Just(RST), Just(SYN | ACK)];
    prop_oneof![
        (any::<bool>(), 0..12u16, flags.clone()).prop_map(|(second_client, port, flags)| Op::Tcp {
            second_client,
            port,
            flags
        }),
        (0..12u16).prop_map(|port| Op::Udp { port }),
        (0..4u8, 0..12u16, any::<bool>(), flags).prop_map(|(backend, port, tcp, flags)| Op::Reply {
            backend,
            port,
            tcp,
            flags
        }),
        (0..200_000u64).prop_map(Op::Advance),
        Just(Op::Sweep),
        (
            any::<u8>(),
            prop_oneof![Just(Policy::RoundRobin), Just(Policy::LeastConn), Just(Policy::Maglev)],
            any::<bool>()
        )
            .prop_map(|(mask, policy, affinity)| Op::SetBackends(mask, policy, affinity)),
    ]
}

proptest! {
    // Each case builds Maglev tables (65 537 entries) in a debug build: 128
    // cases keep the suite quick (2 000 passed once, in 33 s).
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn random_traffic_keeps_the_table_bounded_and_its_counts_true(ops in proptest::collection::vec(op(), 1..200)) {
        const CAPACITY: usize = 8;
        let conntrack = Arc::new(Conntrack::new(CAPACITY, 3));
        let mut a = node_a_with(conntrack.clone(), service(Policy::LeastConn, active((0..4).map(remote))));
        let mut now = 0;
        for op in ops {
            match op {
                Op::Tcp { second_client, port, flags } => {
                    let (from, client) = if second_client { (EP2, T2) } else { (EP1, T1) };
                    let _ = send(&a, from, &tcp((client, port), (VIP, 80), flags));
                }
                Op::Udp { port } => {
                    let _ = send(&a, EP1, &udp((T1, port), (VIP, 80)));
                }
                Op::Reply { backend, port, tcp: true, flags } => {
                    let _ = a.ingress(NODE_B, &from_node_b(&super::tests_vip::tcp((remote(backend), 80), (T1, port), flags)));
                }
                Op::Reply { backend, port, .. } => {
                    let _ = a.ingress(NODE_B, &from_node_b(&udp((remote(backend), 80), (T1, port))));
                }
                Op::Advance(ms) => {
                    now += ms;
                    conntrack.advance(now);
                }
                Op::Sweep => {
                    a.sweep();
                }
                Op::SetBackends(mask, policy, affinity) => {
                    let backends = (0..4u8)
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| if mask & (16 << i) != 0 { Backend::draining(remote(i)) } else { Backend::active(remote(i)) })
                        .collect();
                    let affinity = affinity.then_some(std::time::Duration::from_secs(60));
                    a.set_vip(VNI, VipService { affinity, ..service(policy, backends) }).unwrap();
                }
            }
            let c = conntrack.counters();
            prop_assert!(conntrack.len() <= CAPACITY);
            prop_assert_eq!(c.entries, c.created - c.expired - c.evicted - c.removed);
            let tracked: u64 = a.lb_stats().iter().map(|s| s.flows).sum();
            prop_assert_eq!(tracked, c.entries);
        }
        // Everything times out in the end, and every count returns to zero.
        conntrack.advance(now + 25 * 60 * 60 * SECOND);
        a.sweep();
        prop_assert_eq!(conntrack.len(), 0);
        prop_assert!(!conntrack.has_flows_of(T1) && !conntrack.has_flows_of(T2));
        prop_assert!(a.lb_stats().iter().all(|s| s.flows == 0));
    }
}
