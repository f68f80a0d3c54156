//! The data plane's whole receive decision on arbitrary datagrams.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use shoal_dataplane::{EndpointId, Ingress, Tables};
use shoal_wire::Vni;

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let vni = Vni::new(4096).unwrap();
    let mut t = Tables::new(1450);
    t.add_network(vni, "10.0.1.0/24".parse().unwrap()).unwrap();
    t.attach(EndpointId(1), vni, Ipv4Addr::new(10, 0, 1, 2)).unwrap();
    t.set_remote(vni, Ipv4Addr::new(10, 0, 1, 3), Ipv4Addr::new(198, 18, 0, 2)).unwrap();
    t
});

fuzz_target!(|data: &[u8]| {
    if let Ingress::Deliver { packet, .. } = TABLES.ingress(Ipv4Addr::new(198, 18, 0, 2), data) {
        assert!(packet.end <= data.len());
    }
});
