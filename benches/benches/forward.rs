//! Per-packet cost of the forwarding core: encapsulate a 1400-byte packet on
//! one node and decapsulate it on the other, against a baseline that only
//! copies the same bytes once each way (the least any data plane does).

#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use shoal_dataplane::{Egress, EndpointId, Ingress, Tables};
use shoal_wire::{ENCAP_HEADROOM, Vni};

fn tables(local: (EndpointId, Ipv4Addr), remote: (Ipv4Addr, Ipv4Addr)) -> Tables {
    let vni = Vni::new(4096).unwrap();
    let mut t = Tables::new(1450);
    t.add_network(vni, "10.0.0.0/16".parse().unwrap()).unwrap();
    t.attach(local.0, vni, local.1).unwrap();
    t.set_remote(vni, remote.0, remote.1).unwrap();
    // A realistic table: a few hundred other endpoints.
    for i in 0..500u32 {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 100, 0)) + i);
        t.set_remote(vni, ip, Ipv4Addr::new(198, 18, 1, (i % 200) as u8)).unwrap();
    }
    t
}

fn forward(c: &mut Criterion) {
    let (t1, t2) = (Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3));
    let (node_a, node_b) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    let a = tables((EndpointId(1), t1), (t2, node_b));
    let b = tables((EndpointId(2), t2), (t1, node_a));
    let builder = PacketBuilder::ipv4(t1.octets(), t2.octets(), 64).tcp(40000, 5201, 1, 65535);
    let mut packet = Vec::new();
    builder.write(&mut packet, &[0x5a; 1360]).unwrap();
    let len = packet.len();
    let mut buf = vec![0u8; ENCAP_HEADROOM + len];
    buf[ENCAP_HEADROOM..].copy_from_slice(&packet);
    let mut copy = vec![0u8; ENCAP_HEADROOM + len];

    let mut group = c.benchmark_group("per_packet_1400B");
    group.bench_function("baseline_copy_both_ways", |bench| {
        bench.iter(|| {
            copy[ENCAP_HEADROOM..].copy_from_slice(black_box(&buf[ENCAP_HEADROOM..]));
            buf[ENCAP_HEADROOM..].copy_from_slice(black_box(&copy[ENCAP_HEADROOM..]));
        })
    });
    group.bench_function("encapsulate_then_decapsulate", |bench| {
        bench.iter(|| {
            let Egress::Remote { frame, .. } =
                a.egress(EndpointId(1), black_box(&mut buf), ENCAP_HEADROOM, len)
            else {
                panic!("not forwarded")
            };
            let Ingress::Deliver { packet, .. } = b.ingress(node_a, black_box(&buf[frame])) else {
                panic!("not delivered")
            };
            black_box(packet);
        })
    });
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
