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

/// [`update`] for a 4-byte field at an even offset (an IPv4 address) in
/// plain integer arithmetic: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), summed
/// over 16-bit words with end-around carry. NAT runs it twice per packet.
/// Where the result is a one's complement zero it may be 0x0000 where
/// [`update`] gives 0xffff; both verify.
fn update_addr(checksum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let word = |b: [u8; 4], i: usize| u32::from(u16::from_be_bytes([b[i], b[i + 1]]));
    let mut sum = u32::from(!checksum)
        + (!word(old, 0) & 0xffff)
        + (!word(old, 2) & 0xffff)
        + word(new, 0)
        + word(new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
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
    Checksums::of(&packet)?.rewrite_ipv4_addr(bytes, side, new)
}

/// Where the checksums covering an IPv4 packet's addresses sit, found once
/// from a parse so that a rewrite (or several, or one applied to a copy of
/// the packet) need not parse again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checksums {
    /// The TCP or UDP checksum's offset and protocol, if the packet has one
    /// to fix (not for other protocols, nor for fragments after the first).
    transport: Option<(usize, IpProtocol)>,
}

impl Checksums {
    /// The checksums of `packet`; an error for IPv6.
    pub fn of(packet: &IpPacket<'_>) -> Result<Checksums> {
        if !packet.src.is_ipv4() {
            return Err(Error);
        }
        Ok(Checksums { transport: transport_checksum_at(packet).map(|at| (at, packet.protocol)) })
    }

    /// Rewrites the source or destination address of the IPv4 packet these
    /// checksums were found in (or a copy of it) in place, fixing the header
    /// checksum and the TCP or UDP checksum, as [`rewrite_ipv4_addr`] does.
    /// Fails, changing nothing, if `bytes` is too short for them.
    pub fn rewrite_ipv4_addr(&self, bytes: &mut [u8], side: Side, new: Ipv4Addr) -> Result<()> {
        let end = self.transport.map_or(IPV4_DST + 4, |(at, _)| (at + 2).max(IPV4_DST + 4));
        if bytes.len() < end {
            return Err(Error);
        }
        let at = match side {
            Side::Source => IPV4_SRC,
            Side::Destination => IPV4_DST,
        };
        let old = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let new = new.octets();
        bytes[at..at + 4].copy_from_slice(&new);
        let csum = update_addr(read_u16(bytes, IPV4_CHECKSUM), old, new);
        write_u16(bytes, IPV4_CHECKSUM, csum);
        if let Some((at, protocol)) = self.transport {
            fix_transport(bytes, at, protocol, |csum| update_addr(csum, old, new));
        }
        Ok(())
    }
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
    fix_transport(bytes, csum_at, protocol, |csum| update(csum, &old, &new.to_be_bytes()));
    Ok(())
}

fn fix_transport(bytes: &mut [u8], at: usize, protocol: IpProtocol, update: impl Fn(u16) -> u16) {
    let current = read_u16(bytes, at);
    if protocol == IpProtocol::Udp && current == 0 {
        return;
    }
    let mut csum = update(current);
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
    fn the_address_update_agrees_with_the_general_one() {
        // A fixed-seed LCG, and the edge words.
        let mut x: u64 = 0x5eed;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (x >> 16) as u32
        };
        let edges = [0u32, 0xffff_ffff, 0x0000_ffff, 0xffff_0000, 0x8000_8000, 1];
        for i in 0..20_000 {
            let (csum, old, new) = if i < 216 {
                (edges[i % 6] as u16, edges[i / 6 % 6], edges[i / 36 % 6])
            } else {
                (next() as u16, next(), next())
            };
            let (old, new) = (old.to_be_bytes(), new.to_be_bytes());
            // One's complement has two zeros, 0x0000 and 0xffff: either
            // verifies, and the two updates may pick different ones.
            let zero = |c: u16| if c == 0xffff { 0 } else { c };
            let (fast, general) = (update_addr(csum, old, new), update(csum, &old, &new));
            assert_eq!(zero(fast), zero(general), "{csum:#x} {old:?} {new:?}");
        }
    }

    #[test]
    fn checksums_found_once_rewrite_a_copy() {
        let original = tcp_packet();
        let checksums = Checksums::of(&IpPacket::parse(&original).unwrap()).unwrap();
        let mut copy = original.clone();
        checksums.rewrite_ipv4_addr(&mut copy, Side::Source, Ipv4Addr::new(10, 0, 1, 250)).unwrap();
        assert_checksums_valid(&copy);
        assert_eq!(IpPacket::parse(&copy).unwrap().src, Ipv4Addr::new(10, 0, 1, 250));
        let mut short = original[..30].to_vec();
        assert_eq!(checksums.rewrite_ipv4_addr(&mut short, Side::Source, Ipv4Addr::LOCALHOST), Err(Error));
        assert_eq!(short, original[..30]);
    }

    #[test]
    fn port_rewrite_needs_a_transport_header() {
        let mut bytes = tcp_packet();
        bytes.truncate(22);
        bytes[2..4].copy_from_slice(&22u16.to_be_bytes());
        assert_eq!(rewrite_port(&mut bytes, Side::Source, 1), Err(Error));
    }
}
