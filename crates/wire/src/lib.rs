//! Packet views and emitters for Shoal's overlay: VXLAN (RFC 7348), Ethernet,
//! and the IPv4/IPv6/UDP/TCP facts the data plane needs, with incremental
//! checksum updates for address rewriting and ICMP echo replies.
//!
//! Invariants: no IO, no allocation, no panics on any input. Views borrow the
//! caller's buffer (`Foo<T: AsRef<[u8]>>`); `new_checked` is the only way in for
//! untrusted bytes, after which every getter is in bounds. Parse failures are
//! the unit [`Error`]: the only reaction to a bad packet is to drop and count it,
//! and the caller knows which layer it was parsing.

#![forbid(unsafe_code)]

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ip;
pub mod vxlan;

pub use ethernet::{EtherType, EthernetAddress, EthernetFrame};
pub use ip::{FlowKey, IpPacket, IpProtocol};
pub use vxlan::{Vni, VxlanPacket};

/// A packet was too short or inconsistent for the layer being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Error;

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("malformed or truncated packet")
    }
}

impl std::error::Error for Error {}

/// Result of parsing untrusted bytes.
pub type Result<T> = std::result::Result<T, Error>;

/// Bytes that VXLAN adds in front of an inner IP packet inside the outer UDP
/// payload: the VXLAN header and the synthesised inner Ethernet header.
pub const ENCAP_HEADROOM: usize = vxlan::HEADER_LEN + ethernet::HEADER_LEN;

/// Bytes the whole encapsulation costs on the underlay for IPv4: outer IPv4
/// (20) and UDP (8) headers plus [`ENCAP_HEADROOM`]. The overlay MTU is the
/// underlay MTU minus this.
pub const ENCAP_OVERHEAD_V4: usize = 20 + 8 + ENCAP_HEADROOM;
