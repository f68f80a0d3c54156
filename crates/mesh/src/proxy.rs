//! The PROXY protocol v2 header (haproxy's `proxy-protocol.txt`, section 2.2)
//! that a port with `proxy_protocol` sends first on each backend connection,
//! so the backend learns the client's address and the address it reached.
//!
//! Only what the mesh sends: command `PROXY`, `TCP4` or `TCP6`, no TLVs.
//! The header is built on the stack; nothing is allocated.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crate::canonical;

/// The 12 bytes every v2 header starts with.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2 (high nibble), command PROXY (low nibble).
const VERSION_PROXY: u8 = 0x21;
/// AF_INET (high nibble), STREAM (low nibble).
const TCP4: u8 = 0x11;
/// AF_INET6, STREAM.
const TCP6: u8 = 0x21;

/// Signature, version and command, family and protocol, address length.
const FIXED_LEN: usize = 16;
/// Two IPv4 addresses and two ports.
const TCP4_ADDRESSES_LEN: usize = 12;
/// Two IPv6 addresses and two ports.
const TCP6_ADDRESSES_LEN: usize = 36;
/// The longest header the mesh sends.
const MAX_LEN: usize = FIXED_LEN + TCP6_ADDRESSES_LEN;

/// One connection's header, ready to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProxyHeader {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl ProxyHeader {
    /// The header for a connection from `source` (the client) to
    /// `destination` (the listener's address it reached). IPv4-mapped
    /// addresses count as IPv4; if only one side is IPv4 both are sent as
    /// IPv6 (`TCP6`), the IPv4 one mapped.
    pub(crate) fn new(source: SocketAddr, destination: SocketAddr) -> ProxyHeader {
        let (source, destination) = (canonical(source), canonical(destination));
        let mut bytes = [0u8; MAX_LEN];
        bytes[..12].copy_from_slice(&SIGNATURE);
        bytes[12] = VERSION_PROXY;
        let addresses = &mut bytes[FIXED_LEN..];
        let (family, addresses_len) = match (source.ip(), destination.ip()) {
            (IpAddr::V4(from), IpAddr::V4(to)) => {
                addresses[0..4].copy_from_slice(&from.octets());
                addresses[4..8].copy_from_slice(&to.octets());
                addresses[8..10].copy_from_slice(&source.port().to_be_bytes());
                addresses[10..12].copy_from_slice(&destination.port().to_be_bytes());
                (TCP4, TCP4_ADDRESSES_LEN)
            }
            (from, to) => {
                addresses[0..16].copy_from_slice(&as_ipv6(from).octets());
                addresses[16..32].copy_from_slice(&as_ipv6(to).octets());
                addresses[32..34].copy_from_slice(&source.port().to_be_bytes());
                addresses[34..36].copy_from_slice(&destination.port().to_be_bytes());
                (TCP6, TCP6_ADDRESSES_LEN)
            }
        };
        bytes[13] = family;
        // At most 36: the cast cannot truncate.
        bytes[14..16].copy_from_slice(&(addresses_len as u16).to_be_bytes());
        ProxyHeader { bytes, len: FIXED_LEN + addresses_len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn as_ipv6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::ProxyHeader;

    #[test]
    fn tcp4_header_is_the_spec_bytes() {
        let header = ProxyHeader::new("192.0.2.10:51234".parse().unwrap(), "10.1.2.3:8080".parse().unwrap());
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
            0x21,                   // version 2, PROXY
            0x11,                   // AF_INET, STREAM
            0x00, 0x0c,             // 12 bytes of addresses
            192, 0, 2, 10,          // source
            10, 1, 2, 3,            // destination
            0xc8, 0x22,             // source port 51234
            0x1f, 0x90,             // destination port 8080
        ];
        assert_eq!(header.as_bytes(), expected);
    }

    #[test]
    fn tcp6_header_is_the_spec_bytes() {
        let header =
            ProxyHeader::new("[2001:db8::1]:443".parse().unwrap(), "[2001:db8::2]:80".parse().unwrap());
        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        expected.extend_from_slice(&[0x01, 0xbb, 0x00, 0x50]);
        assert_eq!(header.as_bytes(), &expected[..]);
    }

    #[test]
    fn ipv4_mapped_addresses_are_sent_as_tcp4() {
        let mapped = ProxyHeader::new(
            "[::ffff:192.0.2.10]:1000".parse().unwrap(),
            "[::ffff:10.0.0.1]:80".parse().unwrap(),
        );
        let plain = ProxyHeader::new("192.0.2.10:1000".parse().unwrap(), "10.0.0.1:80".parse().unwrap());
        assert_eq!(mapped.as_bytes(), plain.as_bytes());
    }

    #[test]
    fn mixed_families_are_sent_as_tcp6_with_the_ipv4_side_mapped() {
        let header =
            ProxyHeader::new("192.0.2.10:1000".parse().unwrap(), "[2001:db8::2]:80".parse().unwrap());
        let bytes = header.as_bytes();
        assert_eq!((bytes[13], bytes.len()), (0x21, 52));
        assert_eq!(&bytes[16..32], &"::ffff:192.0.2.10".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }
}
