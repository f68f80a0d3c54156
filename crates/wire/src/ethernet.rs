//! Ethernet II frames, as carried inside VXLAN.
//!
//! Shoal's data plane is L3 (TUN): it never learns MAC addresses. Inner frames
//! get MACs derived from the IPv4 addresses, `02:42:a.b.c.d`, as Docker does,
//! so a kernel `vxlan` peer can be given static neighbour entries.

use std::net::Ipv4Addr;

use crate::{Error, Result};

mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of an Ethernet II header without VLAN tags.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The MAC Shoal gives the interface holding `ip`: `02:42` (locally
    /// administered, unicast) followed by the four address bytes.
    pub const fn from_ipv4(ip: Ipv4Addr) -> EthernetAddress {
        let [a, b, c, d] = ip.octets();
        EthernetAddress([0x02, 0x42, a, b, c, d])
    }
}

impl std::fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

/// The protocol an Ethernet frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800
    Ipv4,
    /// 0x0806
    Arp,
    /// 0x86dd
    Ipv6,
    /// Anything else.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> EtherType {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> u16 {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Unknown(other) => other,
        }
    }
}

/// A read/write view of an Ethernet II frame.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking its length.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer after checking it holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Checks the buffer holds at least a whole header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN { Err(Error) } else { Ok(()) }
    }

    /// The destination MAC.
    pub fn dst_addr(&self) -> EthernetAddress {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        EthernetAddress(mac)
    }

    /// The source MAC.
    pub fn src_addr(&self) -> EthernetAddress {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        EthernetAddress(mac)
    }

    /// The EtherType field.
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The carried packet.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC.
    pub fn set_dst_addr(&mut self, mac: EthernetAddress) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC.
    pub fn set_src_addr(&mut self, mac: EthernetAddress) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac.0);
    }

    /// Sets the EtherType field.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        let value: u16 = ethertype.into();
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// The carried packet, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The meaning of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source MAC.
    pub src_addr: EthernetAddress,
    /// Destination MAC.
    pub dst_addr: EthernetAddress,
    /// Carried protocol.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads a checked frame's header.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        frame.set_dst_addr(self.dst_addr);
        frame.set_src_addr(self.src_addr);
        frame.set_ethertype(self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 16] = [
        0x02, 0x42, 10, 0, 1, 3, // dst 02:42:0a:00:01:03
        0x02, 0x42, 10, 0, 1, 2, // src 02:42:0a:00:01:02
        0x08, 0x00, // IPv4
        0x45, 0x00,
    ];

    fn repr() -> EthernetRepr {
        EthernetRepr {
            src_addr: EthernetAddress::from_ipv4(Ipv4Addr::new(10, 0, 1, 2)),
            dst_addr: EthernetAddress::from_ipv4(Ipv4Addr::new(10, 0, 1, 3)),
            ethertype: EtherType::Ipv4,
        }
    }

    #[test]
    fn parse_fixture() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame).unwrap(), repr());
        assert_eq!(frame.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn emit_over_junk_matches_fixture() {
        let mut buf = [0xa5u8; 16];
        let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
        repr().emit(&mut frame);
        frame.payload_mut().copy_from_slice(&[0x45, 0x00]);
        assert_eq!(buf, FRAME);
    }

    #[test]
    fn truncated_header_is_refused() {
        assert!(EthernetFrame::new_checked(&FRAME[..13]).is_err());
    }

    #[test]
    fn mac_derivation_matches_docker() {
        let mac = EthernetAddress::from_ipv4(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(mac.to_string(), "02:42:0a:00:01:02");
    }

    #[test]
    fn ethertypes_round_trip() {
        for value in [0x0800u16, 0x0806, 0x86dd, 0x88cc] {
            assert_eq!(u16::from(EtherType::from(value)), value);
        }
        assert_eq!(EtherType::from(0x88cc), EtherType::Unknown(0x88cc));
    }
}
