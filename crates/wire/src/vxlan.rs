//! VXLAN header (RFC 7348 section 5): 8 bytes in front of an Ethernet frame.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use crate::{Error, Result};

mod field {
    use std::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: usize = 8;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// The I flag: the VNI field is valid. RFC 7348 requires it on every packet.
pub const FLAG_VNI_VALID: u8 = 0x08;

/// IANA's UDP destination port for VXLAN.
pub const DEFAULT_PORT: u16 = 4789;

/// A 24-bit VXLAN network identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, or `None` if `value` does not fit in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX { Some(Vni(value)) } else { None }
    }

    /// The numeric value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Vni {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A read/write view of a VXLAN header and its payload.
#[derive(Debug, Clone)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps a buffer without checking its length; getters may panic on a
    /// short buffer. Use for buffers this process sized itself.
    pub const fn new_unchecked(buffer: T) -> VxlanPacket<T> {
        VxlanPacket { buffer }
    }

    /// Wraps a buffer after checking it holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<VxlanPacket<T>> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the buffer holds at least a whole header.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN { Err(Error) } else { Ok(()) }
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the I flag is set, as RFC 7348 requires.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_VNI_VALID != 0
    }

    /// The VNI field.
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD..]
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI field.
    pub fn set_vni(&mut self, vni: Vni) {
        let [_, a, b, c] = vni.0.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&[a, b, c]);
    }

    /// The encapsulated Ethernet frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// The meaning of a VXLAN header: today just its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The virtual network the frame belongs to.
    pub vni: Vni,
}

impl VxlanRepr {
    /// Parses a checked header. A header without the I flag is refused, as the
    /// Linux kernel does; reserved bits are ignored on receipt (RFC 7348).
    pub fn parse<T: AsRef<[u8]>>(packet: &VxlanPacket<T>) -> Result<VxlanRepr> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(Error);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header, zeroing every reserved field.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.buffer.as_mut()[..HEADER_LEN].fill(0);
        packet.set_flags(FLAG_VNI_VALID);
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // VNI 4096 (0x001000), I flag, then the first bytes of a payload.
    static PACKET: [u8; 10] = [0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0, 0xaa, 0xbb];

    #[test]
    fn parse_fixture() {
        let packet = VxlanPacket::new_checked(&PACKET[..]).unwrap();
        assert_eq!(packet.flags(), 0x08);
        assert_eq!(packet.vni(), Vni::new(4096).unwrap());
        assert_eq!(packet.payload(), &[0xaa, 0xbb]);
        let repr = VxlanRepr::parse(&packet).unwrap();
        assert_eq!(repr.vni.get(), 4096);
    }

    #[test]
    fn emit_over_junk_matches_fixture() {
        let mut buf = [0xffu8; 10];
        let repr = VxlanRepr { vni: Vni::new(4096).unwrap() };
        let mut packet = VxlanPacket::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(buf, PACKET);
    }

    #[test]
    fn truncated_header_is_refused() {
        assert_eq!(VxlanPacket::new_checked(&PACKET[..7]).unwrap_err(), Error);
    }

    #[test]
    fn missing_i_flag_is_refused() {
        let mut bytes = PACKET;
        bytes[0] = 0x00;
        let packet = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet), Err(Error));
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        let mut bytes = PACKET;
        bytes[0] = 0xff;
        bytes[1] = 0x12;
        bytes[7] = 0x34;
        let packet = VxlanPacket::new_checked(&bytes[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&packet).unwrap().vni.get(), 4096);
    }

    #[test]
    fn vni_is_24_bits() {
        assert!(Vni::new(Vni::MAX).is_some());
        assert!(Vni::new(Vni::MAX + 1).is_none());
        let mut buf = [0u8; 8];
        let mut packet = VxlanPacket::new_unchecked(&mut buf[..]);
        VxlanRepr { vni: Vni::new(0x00ab_cdef).unwrap() }.emit(&mut packet);
        assert_eq!(buf, [0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
    }
}
