//! IP-layer facts the data plane needs from an inner packet, read with
//! etherparse: version, addresses, protocol, ports, and the flow they form.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};

use crate::{Error, Result};

/// An IP protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1
    Icmp,
    /// 6
    Tcp,
    /// 17
    Udp,
    /// 58
    Icmpv6,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> IpProtocol {
        match value {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> u8 {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// The parts of an IPv4 or IPv6 packet that forwarding decisions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (for IPv6, the first next-header value).
    pub protocol: IpProtocol,
    /// Length of the IP header(s) before the transport payload.
    pub header_len: usize,
    /// Whether this is a fragment other than the first, or one with more
    /// fragments to come: ports are then not reliably readable.
    pub fragment: bool,
    /// The whole packet, trimmed to the length its header states.
    pub bytes: &'a [u8],
}

impl<'a> IpPacket<'a> {
    /// Parses an IPv4 or IPv6 packet. Bytes after the stated total length
    /// (link-layer padding) are ignored; a packet shorter than it states is
    /// refused.
    pub fn parse(bytes: &'a [u8]) -> Result<IpPacket<'a>> {
        match bytes.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(bytes),
            Some(6) => Self::parse_v6(bytes),
            _ => Err(Error),
        }
    }

    fn parse_v4(bytes: &'a [u8]) -> Result<IpPacket<'a>> {
        let header = Ipv4HeaderSlice::from_slice(bytes).map_err(|_| Error)?;
        let total = usize::from(header.total_len());
        let header_len = header.slice().len();
        if total < header_len || total > bytes.len() {
            return Err(Error);
        }
        Ok(IpPacket {
            src: header.source_addr().into(),
            dst: header.destination_addr().into(),
            protocol: IpProtocol::from(header.protocol().0),
            header_len,
            fragment: header.is_fragmenting_payload(),
            bytes: &bytes[..total],
        })
    }

    fn parse_v6(bytes: &'a [u8]) -> Result<IpPacket<'a>> {
        let header = Ipv6HeaderSlice::from_slice(bytes).map_err(|_| Error)?;
        let total = header.slice().len() + usize::from(header.payload_length());
        if total > bytes.len() {
            return Err(Error);
        }
        Ok(IpPacket {
            src: header.source_addr().into(),
            dst: header.destination_addr().into(),
            protocol: IpProtocol::from(header.next_header().0),
            header_len: header.slice().len(),
            fragment: false,
            bytes: &bytes[..total],
        })
    }

    /// The transport payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.header_len..]
    }

    /// The flow this packet belongs to. Ports are read for unfragmented TCP
    /// and UDP; other packets hash on addresses and protocol alone.
    pub fn flow_key(&self) -> FlowKey {
        let (src_port, dst_port) = match self.protocol {
            IpProtocol::Tcp | IpProtocol::Udp if !self.fragment => match self.payload() {
                [a, b, c, d, ..] => (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
                _ => (0, 0),
            },
            _ => (0, 0),
        };
        FlowKey { src: self.src, dst: self.dst, protocol: self.protocol.into(), src_port, dst_port }
    }
}

/// A transport flow: addresses, protocol and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    /// Source port, or 0.
    pub src_port: u16,
    /// Destination port, or 0.
    pub dst_port: u16,
}

impl FlowKey {
    /// A stable 32-bit hash of the flow (FNV-1a over its fields, then a final
    /// mix), the same on every node and every run, so a flow keeps one outer
    /// source port and one path.
    pub fn hash(&self) -> u32 {
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(PRIME);
            }
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                eat(&s.octets());
                eat(&d.octets());
            }
            (s, d) => {
                eat(&ip_bytes(s));
                eat(&ip_bytes(d));
            }
        }
        eat(&[self.protocol]);
        eat(&self.src_port.to_be_bytes());
        eat(&self.dst_port.to_be_bytes());
        // Fold and avalanche so the low bits (used for port choice) mix well.
        let mut x = (h ^ (h >> 32)) as u32;
        x ^= x >> 16;
        x = x.wrapping_mul(0x7feb_352d);
        x ^= x >> 15;
        x = x.wrapping_mul(0x846c_a68b);
        x ^ (x >> 16)
    }
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// An IPv4 subnet: an address and a prefix length, host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// A subnet; `None` if the prefix is over 32 or host bits are set.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Option<Ipv4Cidr> {
        if prefix > 32 {
            return None;
        }
        let cidr = Ipv4Cidr { network, prefix };
        (u32::from(network) & !cidr.mask() == 0).then_some(cidr)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The directed broadcast address (all host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// Why a subnet string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseCidrError(String);

impl std::fmt::Display for ParseCidrError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid subnet {:?}: expected an IPv4 network like 10.0.1.0/24 with host bits zero",
            self.0
        )
    }
}

impl std::error::Error for ParseCidrError {}

impl FromStr for Ipv4Cidr {
    type Err = ParseCidrError;

    fn from_str(s: &str) -> std::result::Result<Ipv4Cidr, ParseCidrError> {
        let err = || ParseCidrError(s.to_owned());
        let (addr, prefix) = s.split_once('/').ok_or_else(err)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        let prefix: u8 = prefix.parse().map_err(|_| err())?;
        Ipv4Cidr::new(addr, prefix).ok_or_else(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    // IPv4/UDP 10.0.1.2:4000 -> 10.0.1.3:53, 4 payload bytes, then 2 bytes of
    // link padding that parsing must trim.
    static UDP_V4: [u8; 34] = [
        0x45, 0x00, 0x00, 0x20, 0x00, 0x01, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, // ver..csum
        10, 0, 1, 2, 10, 0, 1, 3, // addresses
        0x0f, 0xa0, 0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, // UDP header
        1, 2, 3, 4, // payload
        0xee, 0xee, // padding
    ];

    #[test]
    fn parse_ipv4_udp_fixture() {
        let packet = IpPacket::parse(&UDP_V4).unwrap();
        assert_eq!(packet.src, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 2)));
        assert_eq!(packet.dst, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 3)));
        assert_eq!(packet.protocol, IpProtocol::Udp);
        assert_eq!(packet.bytes.len(), 32);
        assert_eq!(packet.payload().len(), 12);
        let flow = packet.flow_key();
        assert_eq!((flow.src_port, flow.dst_port, flow.protocol), (4000, 53, 17));
    }

    #[test]
    fn short_ipv4_is_refused() {
        assert!(IpPacket::parse(&UDP_V4[..31]).is_err());
        assert!(IpPacket::parse(&UDP_V4[..19]).is_err());
        assert!(IpPacket::parse(&[]).is_err());
        let mut bad_version = UDP_V4;
        bad_version[0] = 0x55;
        assert!(IpPacket::parse(&bad_version).is_err());
    }

    #[test]
    fn total_length_below_header_is_refused() {
        let mut bytes = UDP_V4;
        bytes[3] = 0x10; // total length 16 < 20-byte header
        assert!(IpPacket::parse(&bytes).is_err());
    }

    #[test]
    fn parse_ipv6_fixture() {
        let mut bytes = [0u8; 44];
        bytes[0] = 0x60;
        bytes[5] = 4; // payload length
        bytes[6] = 58; // ICMPv6
        bytes[7] = 255;
        bytes[8..24].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        bytes[24..40].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        let packet = IpPacket::parse(&bytes).unwrap();
        assert_eq!(packet.protocol, IpProtocol::Icmpv6);
        assert_eq!(packet.bytes.len(), 44);
        assert!(IpPacket::parse(&bytes[..43]).is_err());
    }

    #[test]
    fn flow_hash_is_stable_and_spreads() {
        let packet = IpPacket::parse(&UDP_V4).unwrap();
        let flow = packet.flow_key();
        assert_eq!(flow.hash(), flow.hash());
        let mut seen = std::collections::HashSet::new();
        for port in 0..64u16 {
            seen.insert(FlowKey { src_port: 40000 + port, ..flow }.hash() % 8);
        }
        assert_eq!(seen.len(), 8, "64 flows should use all 8 buckets");
    }

    #[test]
    fn cidr_parse_and_contains() {
        let cidr: Ipv4Cidr = "10.0.1.0/24".parse().unwrap();
        assert!(cidr.contains(Ipv4Addr::new(10, 0, 1, 200)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 0, 2, 1)));
        assert_eq!(cidr.broadcast(), Ipv4Addr::new(10, 0, 1, 255));
        assert_eq!(cidr.to_string(), "10.0.1.0/24");
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        for bad in ["10.0.1.1/24", "10.0.1.0/33", "10.0.1.0", "x/24", "10.0.1.0/"] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err();
            assert!(err.to_string().contains("invalid subnet"), "{bad}: {err}");
        }
    }
}
