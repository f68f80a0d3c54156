//! Per-packet cost of service VIP load balancing against plain forwarding, in
//! the same run: a 1400-byte TCP segment of an existing flow from a client on
//! node A to a VIP whose backend is on node B (conntrack lookup, DNAT,
//! encapsulation; decapsulation on B), the backend's reply (encapsulation on
//! B; decapsulation, reply lookup and un-NAT on A), plain packets to a client
//! that has VIP flows (from another task: no lookup; from the backend, on
//! another port: the reply lookup misses), and the first packet of new
//! flows (backend choice and conntrack insertion), also at the table's
//! bound (amortised eviction); and a sweep of a full default-sized table.
//!
//! Every case restores the 40 header bytes of its packet before each
//! iteration, NAT or not, so the differences between cases are the VIP
//! work alone.

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use std::sync::Arc;

use shoal_dataplane::{Backend, Conntrack, Egress, EndpointId, Ingress, Policy, Tables, VipService};
use shoal_wire::{ENCAP_HEADROOM, Vni};

const VNI: Vni = Vni::new(4096).unwrap();
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const NODE_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const HEADERS: usize = 40;

/// A node's tables: one local endpoint, one remote address, and a few
/// hundred other endpoints, as in the `forward` bench.
fn tables(local: (EndpointId, Ipv4Addr), remote: (Ipv4Addr, Ipv4Addr)) -> Tables {
    tables_tracking(local, remote, shoal_dataplane::core::DEFAULT_CONNTRACK_CAPACITY)
}

fn tables_tracking(local: (EndpointId, Ipv4Addr), remote: (Ipv4Addr, Ipv4Addr), capacity: usize) -> Tables {
    let mut t = Tables::with_conntrack(1450, Arc::new(Conntrack::new(capacity, 1)));
    t.add_network(VNI, "10.0.0.0/16".parse().unwrap()).unwrap();
    t.attach(local.0, VNI, local.1).unwrap();
    t.set_remote(VNI, remote.0, remote.1).unwrap();
    for i in 0..500u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 100, 0)) + i);
        t.set_remote(VNI, ip, Ipv4Addr::new(198, 18, 1, (i % 200) as u8)).unwrap();
    }
    t
}

/// The backend first, then other backends elsewhere.
fn service(policy: Policy) -> VipService {
    let others =
        (0..9u32).map(|i| Backend::active(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 100, 0)) + i)));
    VipService {
        vip: VIP,
        policy,
        affinity: None,
        backends: std::iter::once(Backend::active(BACKEND)).chain(others).collect(),
    }
}

fn segment(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), syn: bool) -> Vec<u8> {
    let builder = PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64).tcp(src.1, dst.1, 1, 65535);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let mut packet = Vec::new();
    builder.write(&mut packet, if syn { &[][..] } else { &[0x5a; 1360][..] }).unwrap();
    packet
}

fn with_headroom(packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; ENCAP_HEADROOM];
    buf.extend_from_slice(packet);
    buf
}

/// Sends `packet` from `from` on `sender` and receives it on `receiver`;
/// applies the un-NAT the receiver asks for. Restores the packet's headers
/// first.
fn through(sender: &Tables, from: EndpointId, receiver: &Tables, packet: &[u8], buf: &mut [u8]) {
    buf[ENCAP_HEADROOM..ENCAP_HEADROOM + HEADERS].copy_from_slice(&packet[..HEADERS]);
    let Egress::Remote { node, frame, .. } =
        sender.egress(from, black_box(&mut *buf), ENCAP_HEADROOM, packet.len())
    else {
        panic!("not forwarded")
    };
    let source = if node == NODE_B { NODE_A } else { NODE_B };
    let Ingress::Deliver { packet, nat, .. } = receiver.ingress(source, black_box(&buf[frame.clone()]))
    else {
        panic!("not delivered")
    };
    if let Some(nat) = nat {
        nat.apply(&mut buf[frame][packet]).unwrap();
    }
}

fn vip(c: &mut Criterion) {
    let mut a = tables((EndpointId(1), CLIENT), (BACKEND, NODE_B));
    a.set_vip(VNI, service(Policy::RoundRobin)).unwrap();
    let mut b = tables((EndpointId(2), BACKEND), (CLIENT, NODE_A));
    // Another task on node B, not a backend.
    let (ep_other, other) = (EndpointId(3), Ipv4Addr::new(10, 0, 1, 4));
    b.attach(ep_other, VNI, other).unwrap();
    a.set_remote(VNI, other, NODE_B).unwrap();
    let (ep_a, ep_b) = (EndpointId(1), EndpointId(2));

    let plain = segment((CLIENT, 40000), (BACKEND, 5201), false);
    let to_vip = segment((CLIENT, 40001), (VIP, 5201), false);
    let reply = segment((BACKEND, 5201), (CLIENT, 40001), false);
    let not_a_reply = segment((BACKEND, 5202), (CLIENT, 40001), false);
    let from_other = segment((other, 5201), (CLIENT, 40001), false);
    // The VIP flow exists, and has a reply.
    let syn = segment((CLIENT, 40001), (VIP, 5201), true);
    let mut buf = with_headroom(&syn);
    let Egress::Remote { .. } = a.egress(ep_a, &mut buf, ENCAP_HEADROOM, syn.len()) else {
        panic!("flow not created")
    };
    let mut buf = with_headroom(&reply);
    through(&b, ep_b, &a, &reply, &mut buf);
    assert_eq!(a.conntrack().len(), 1);

    let mut group = c.benchmark_group("per_packet_1400B");
    for (name, sender, from, receiver, packet) in [
        ("plain_encapsulate_then_decapsulate", &a, ep_a, &b, &plain),
        ("vip_existing_flow_dnat", &a, ep_a, &b, &to_vip),
        ("vip_reply_un_nat", &b, ep_b, &a, &reply),
        ("plain_to_a_client_with_vip_flows", &b, ep_other, &a, &from_other),
        ("backend_non_reply_to_a_client_with_vip_flows", &b, ep_b, &a, &not_a_reply),
    ] {
        let mut buf = with_headroom(packet);
        group.bench_function(name, |bench| bench.iter(|| through(sender, from, receiver, packet, &mut buf)));
    }
    group.finish();
    assert_eq!(a.conntrack().counters().created, 1, "the benches used the existing flow");

    // New flows: every packet a new (source port, port) pair, in tables
    // emptied (untimed) every 100 000 flows; then in a full table of 65 536
    // flows, where every 4 096th new flow evicts.
    let mut group = c.benchmark_group("new_flow");
    for policy in [Policy::RoundRobin, Policy::LeastConn, Policy::Maglev] {
        a.set_vip(VNI, service(policy)).unwrap();
        group.bench_function(format!("{policy:?}").to_lowercase(), |bench| {
            bench.iter_custom(|iters| new_flows(&mut a, ep_a, policy, iters, Some(100_000)))
        });
    }
    let mut full = tables_tracking((ep_a, CLIENT), (BACKEND, NODE_B), 65_536);
    full.set_vip(VNI, service(Policy::RoundRobin)).unwrap();
    new_flows(&mut full, ep_a, Policy::RoundRobin, 65_536, None);
    group.bench_function("roundrobin_at_the_bound", |bench| {
        bench.iter_custom(|iters| new_flows(&mut full, ep_a, Policy::RoundRobin, iters, None))
    });
    group.finish();
    // Criterion's test mode runs each routine once: make sure the table
    // did reach its bound, and evicted there.
    new_flows(&mut full, ep_a, Policy::RoundRobin, 4_096, None);
    assert!(full.conntrack().counters().evicted > 0, "{:?}", full.conntrack().counters());

    // A sweep that removes nothing: every shard locked in turn and scanned.
    let mut group = c.benchmark_group("sweep");
    // Filled to exactly the bound: one flow more would evict a batch.
    let room = shoal_dataplane::core::DEFAULT_CONNTRACK_CAPACITY.saturating_sub(a.conntrack().len());
    new_flows(&mut a, ep_a, Policy::RoundRobin, room as u64, None);
    assert_eq!(a.conntrack().len(), shoal_dataplane::core::DEFAULT_CONNTRACK_CAPACITY);
    group.bench_function("full_default_table", |bench| bench.iter(|| a.sweep()));
    group.finish();
}

/// Sends `iters` first packets of new flows from `from` (a fresh (source
/// port, port) pair each, across calls); empties the VIP's flows (untimed)
/// whenever `reset_at` are tracked.
fn new_flows(
    t: &mut Tables,
    from: EndpointId,
    policy: Policy,
    iters: u64,
    reset_at: Option<usize>,
) -> Duration {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let syn = segment((CLIENT, 1), (VIP, 1), true);
    let mut buf = with_headroom(&syn);
    let at = ENCAP_HEADROOM;
    let mut spent = Duration::ZERO;
    let mut start = Instant::now();
    for _ in 0..iters {
        if reset_at.is_some_and(|n| t.conntrack().len() >= n) {
            spent += start.elapsed();
            t.remove_vip(VNI, VIP);
            t.set_vip(VNI, service(policy)).unwrap();
            start = Instant::now();
        }
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sport, dport) = (((n >> 16) as u16).wrapping_add(1), n as u16);
        buf[at + 16..at + 20].copy_from_slice(&VIP.octets());
        buf[at + 20..at + 22].copy_from_slice(&sport.to_be_bytes());
        buf[at + 22..at + 24].copy_from_slice(&dport.to_be_bytes());
        let verdict = t.egress(from, black_box(&mut buf), at, syn.len());
        assert!(!matches!(verdict, Egress::Drop(_)), "{verdict:?}");
    }
    spent + start.elapsed()
}

criterion_group!(benches, vip);
criterion_main!(benches);
