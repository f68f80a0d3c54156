//! IP parsing, flow keys and in-place NAT rewrites on arbitrary bytes.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use shoal_wire::IpPacket;
use shoal_wire::checksum::{Side, rewrite_ipv4_addr, rewrite_port};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = IpPacket::parse(data) else { return };
    assert!(packet.bytes.len() <= data.len());
    let _ = packet.flow_key().hash();
    let mut copy = data.to_vec();
    let _ = rewrite_ipv4_addr(&mut copy, Side::Destination, Ipv4Addr::new(10, 0, 0, 1));
    let _ = rewrite_port(&mut copy, Side::Source, 4242);
});
