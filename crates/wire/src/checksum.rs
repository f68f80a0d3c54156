//! Incremental Internet checksum updates (RFC 1624) for rewriting addresses and
//! ports in place, as NAT for service VIPs needs: the cost is independent of
//! the packet's length.

use std::net::Ipv4Addr;

use crate::{Error, IpPacket, IpProtocol, Result};

/// Updates a one's-complement checksum for `old` bytes becoming `new` bytes
/// (same length, even offset within the summed data).
#[must_use = "the updated checksum must be written back"]
pub fn update(checksum: u16, old: &[u8], new: &[u8]) -> u16 {
    u16::from_be_bytes(internet_checksum::update(checksum.to_be_bytes(), old, new))
}

/// Which side of a flow to rewrite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source address or port.
    Source,
    /// The destination address or port.
    Destination,
}

const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;

/// Where the transport checksum sits, if this packet has one to fix.
fn transport_checksum_at(packet: &IpPacket<'_>) -> Option<usize> {
    if packet.fragment && packet.bytes.len() > packet.header_len && !first_fragment(packet.bytes) {
        return None;
    }
    let offset = match packet.protocol {
        IpProtocol::Tcp => 16,
        IpProtocol::Udp => 6,
        _ => return None,
    };
    let at = packet.header_len + offset;
    (at + 2 <= packet.bytes.len()).then_some(at)
}

fn first_fragment(bytes: &[u8]) -> bool {
    u16::from_be_bytes([bytes[6], bytes[7]]) & 0x1fff == 0
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Rewrites the source or destination address of an IPv4 packet in place,
/// fixing the header checksum and the TCP or UDP checksum (which covers the
/// address through the pseudo-header). A UDP checksum of zero means "none"
/// and stays zero.
pub fn rewrite_ipv4_addr(bytes: &mut [u8], side: Side, new: Ipv4Addr) -> Result<()> {
    let packet = IpPacket::parse(bytes)?;
    if !packet.src.is_ipv4() {
        return Err(Error);
    }
    let transport = transport_checksum_at(&packet).map(|at| (at, packet.protocol));
    let at = match side {
        Side::Source => IPV4_SRC,
        Side::Destination => IPV4_DST,
    };
    let mut old = [0u8; 4];
    old.copy_from_slice(&bytes[at..at + 4]);
    let new = new.octets();
    bytes[at..at + 4].copy_from_slice(&new);
    let csum = update(read_u16(bytes, IPV4_CHECKSUM), &old, &new);
    write_u16(bytes, IPV4_CHECKSUM, csum);
    if let Some((at, protocol)) = transport {
        fix_transport(bytes, at, protocol, &old, &new);
    }
    Ok(())
}

/// Rewrites the source or destination port of an unfragmented (or first
/// fragment) IPv4 TCP or UDP packet in place, fixing its checksum.
pub fn rewrite_port(bytes: &mut [u8], side: Side, new: u16) -> Result<()> {
    let packet = IpPacket::parse(bytes)?;
    let csum_at = transport_checksum_at(&packet).ok_or(Error)?;
    let protocol = packet.protocol;
    let at = packet.header_len
        + match side {
            Side::Source => 0,
            Side::Destination => 2,
        };
    let old = read_u16(bytes, at).to_be_bytes();
    write_u16(bytes, at, new);
    fix_transport(bytes, csum_at, protocol, &old, &new.to_be_bytes());
    Ok(())
}

fn fix_transport(bytes: &mut [u8], at: usize, protocol: IpProtocol, old: &[u8], new: &[u8]) {
    let current = read_u16(bytes, at);
    if protocol == IpProtocol::Udp && current == 0 {
        return;
    }
    let mut csum = update(current, old, new);
    if protocol == IpProtocol::Udp && csum == 0 {
        csum = 0xffff;
    }
    write_u16(bytes, at, csum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

    fn tcp_packet() -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 1, 3], 64).tcp(40000, 80, 7, 1024);
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    fn udp_packet() -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 1, 3], 64).udp(5353, 53);
        let payload = b"query";
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// Checks every checksum in `bytes` against a full recomputation.
    fn assert_checksums_valid(bytes: &[u8]) {
        let sliced = SlicedPacket::from_ip(bytes).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else { panic!("not ipv4") };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        match sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let expected = tcp.to_header().calc_checksum_ipv4(&header, tcp.payload()).unwrap();
                assert_eq!(tcp.checksum(), expected);
            }
            Some(TransportSlice::Udp(udp)) => {
                let expected = udp.to_header().calc_checksum_ipv4(&header, udp.payload()).unwrap();
                assert_eq!(udp.checksum(), expected);
            }
            other => panic!("unexpected transport {other:?}"),
        }
    }

    #[test]
    fn dnat_tcp_keeps_checksums_valid() {
        let mut bytes = tcp_packet();
        assert_checksums_valid(&bytes);
        rewrite_ipv4_addr(&mut bytes, Side::Destination, Ipv4Addr::new(10, 0, 9, 77)).unwrap();
        rewrite_port(&mut bytes, Side::Destination, 8080).unwrap();
        assert_checksums_valid(&bytes);
        let packet = IpPacket::parse(&bytes).unwrap();
        assert_eq!(packet.dst, Ipv4Addr::new(10, 0, 9, 77));
        assert_eq!(packet.flow_key().dst_port, 8080);
    }

    #[test]
    fn snat_udp_keeps_checksums_valid() {
        let mut bytes = udp_packet();
        rewrite_ipv4_addr(&mut bytes, Side::Source, Ipv4Addr::new(192, 0, 2, 1)).unwrap();
        rewrite_port(&mut bytes, Side::Source, 1).unwrap();
        assert_checksums_valid(&bytes);
    }

    #[test]
    fn zero_udp_checksum_stays_zero() {
        let mut bytes = udp_packet();
        let at = 20 + 6;
        bytes[at..at + 2].copy_from_slice(&[0, 0]);
        rewrite_ipv4_addr(&mut bytes, Side::Destination, Ipv4Addr::new(10, 0, 1, 9)).unwrap();
        assert_eq!(&bytes[at..at + 2], &[0, 0]);
    }

    #[test]
    fn port_rewrite_needs_a_transport_header() {
        let mut bytes = tcp_packet();
        bytes.truncate(22);
        bytes[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(rewrite_port(&mut bytes, Side::Source, 1), Err(Error));
    }
}
