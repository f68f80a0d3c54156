//! ICMPv4 echo: turning a request into its reply in place, as a host
//! answering ping does (the data plane answers pings to service VIPs, which
//! no task holds).

use std::net::IpAddr;

use crate::checksum::update;
use crate::{Error, IpPacket, IpProtocol, Result};

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
/// The ICMP header: type, code, checksum, identifier, sequence number.
const HEADER_LEN: usize = 8;
const IPV4_TTL: usize = 8;
const IPV4_CHECKSUM: usize = 10;
const IPV4_SRC: usize = 12;
const IPV4_DST: usize = 16;

/// The TTL a reply leaves with, Linux's default.
pub const REPLY_TTL: u8 = 64;

/// Whether `packet` is an unfragmented ICMPv4 echo request with a whole
/// ICMP header.
pub fn is_echo_request(packet: &IpPacket<'_>) -> bool {
    matches!(packet.src, IpAddr::V4(_))
        && packet.protocol == IpProtocol::Icmp
        && !packet.fragment
        && matches!(packet.payload(), [ECHO_REQUEST, 0, ..] if packet.payload().len() >= HEADER_LEN)
}

/// Turns the ICMPv4 echo request in `bytes` into its echo reply in place:
/// addresses swapped, TTL [`REPLY_TTL`], type 0, identifier, sequence and
/// data kept; both checksums updated incrementally (RFC 1624), so a request
/// with valid checksums gives a reply with valid checksums. Anything but an
/// echo request is refused and left unchanged.
pub fn echo_reply_in_place(bytes: &mut [u8]) -> Result<()> {
    let packet = IpPacket::parse(bytes)?;
    if !is_echo_request(&packet) {
        return Err(Error);
    }
    let icmp = packet.header_len;
    // The header checksum sums 16-bit words, so swapping the two addresses
    // leaves it unchanged; only the TTL word changes it.
    let (src, dst) = bytes[IPV4_SRC..IPV4_DST + 4].split_at_mut(4);
    src.swap_with_slice(dst);
    let old_ttl = [bytes[IPV4_TTL], bytes[IPV4_TTL + 1]];
    bytes[IPV4_TTL] = REPLY_TTL;
    let header = update(read_u16(bytes, IPV4_CHECKSUM), &old_ttl, &[REPLY_TTL, old_ttl[1]]);
    write_u16(bytes, IPV4_CHECKSUM, header);
    let old_type = [bytes[icmp], bytes[icmp + 1]];
    bytes[icmp] = ECHO_REPLY;
    let checksum = update(read_u16(bytes, icmp + 2), &old_type, &[ECHO_REPLY, old_type[1]]);
    write_u16(bytes, icmp + 2, checksum);
    Ok(())
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn write_u16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};

    fn echo(kind: Icmpv4Type) -> Vec<u8> {
        let builder = PacketBuilder::ipv4([10, 0, 1, 2], [10, 0, 1, 200], 61).icmpv4(kind);
        let mut out = Vec::new();
        builder.write(&mut out, b"abcdefgh0123456789").unwrap();
        out
    }

    #[test]
    fn an_echo_request_becomes_a_reply_with_valid_checksums() {
        let request = Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 0x1234, seq: 7 });
        let mut bytes = echo(request);
        echo_reply_in_place(&mut bytes).unwrap();
        let sliced = SlicedPacket::from_ip(&bytes).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else { panic!("not ipv4") };
        let header = ip.header().to_header();
        assert_eq!(header.header_checksum, header.calc_header_checksum());
        assert_eq!(
            (header.source, header.destination, header.time_to_live),
            ([10, 0, 1, 200], [10, 0, 1, 2], 64)
        );
        let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else { panic!("not icmp") };
        let reply = Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 0x1234, seq: 7 });
        assert_eq!(icmp.icmp_type(), reply);
        assert_eq!(icmp.checksum(), icmp.header().icmp_type.calc_checksum(icmp.payload()));
        assert_eq!(icmp.payload(), b"abcdefgh0123456789");
    }

    #[test]
    fn anything_but_an_echo_request_is_left_alone() {
        let reply = echo(Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 1, seq: 1 }));
        let mut bytes = reply.clone();
        assert_eq!(echo_reply_in_place(&mut bytes), Err(Error));
        assert_eq!(bytes, reply);
        let mut truncated = echo(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader { id: 1, seq: 1 }));
        truncated.truncate(24);
        truncated[2..4].copy_from_slice(&24u16.to_be_bytes());
        assert_eq!(echo_reply_in_place(&mut truncated), Err(Error));
    }
}
