//! TCP segmentation and coalescing of Shoal's own, over raw TUN reads and
//! writes (each behind its virtio-net header), without copying a payload
//! byte in userspace.
//!
//! Sending: a TSO super-packet read from a TUN is cut by writing only each
//! segment's headers ([`Segments`]). The payloads stay where the read put
//! them, and one `sendmsg` hands headers and payloads to UDP GSO as an
//! iovec. Receiving: consecutive TCP segments of one flow are joined
//! ([`Coalescer`]) into one TUN write whose iovec is a header of Shoal's
//! and the payloads where `recvmmsg` put them.
//!
//! Inner TCP checksums are the receiver's business, as in the kernel's own
//! stack over veth. Every TCP packet Shoal writes into a TUN is
//! CHECKSUM_PARTIAL (`NEEDS_CSUM`, the pseudo-header sum in the field): the
//! kernel delivers it locally without checking and completes it if the
//! packet is forwarded. What protects the bytes in transit is the outer
//! UDP checksum, which covers the inner packet from the sender's memory to
//! the receiver's (Shoal never sends a zero UDP checksum). So a sender
//! leaves inner checksums unfinished, unless its peers check them (the
//! kernel's vxlan device does): [`Segments::cut`] takes `full_checksums`.
//!
//! Invariants: nothing here reads outside the packet it is given (a
//! malformed packet is refused, never cut or joined); a joined packet is
//! one the sender's kernel could have sent as one TSO super-packet
//! (consecutive sequence numbers, equal headers but for the last segment's
//! PSH, at most 64 KiB).

use std::ops::Range;

use tun_rs::{checksum, checksum_no_fold};

use crate::core::EndpointId;

/// Length of the virtio-net header before every packet of an offloading
/// TUN device.
pub const VNET_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start +
/// csum_offset` is to be completed (holds the pseudo-header sum).
pub const NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const CWR: u8 = 0x80;
/// The largest IP packet: a joined packet stays below it.
const MAX_PACKET: usize = 65_535;
/// The most segments joined into one write.
pub const MAX_JOINED: usize = 64;
/// Room for a virtio-net header and the largest IPv4 and TCP headers.
const MAX_HEADER: usize = VNET_LEN + 60 + 60;

/// The virtio-net header of one TUN read or write (host byte order, as
/// the kernel's tun driver uses without `TUNSETVNETLE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    /// `NEEDS_CSUM` and others.
    pub flags: u8,
    /// `GSO_NONE`, `GSO_TCPV4`...
    pub gso_type: u8,
    /// Length of the headers before the first segment's payload.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksum to complete starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum field is.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Reads a header; `None` if `bytes` is too short.
    pub fn parse(bytes: &[u8]) -> Option<VnetHeader> {
        let b = bytes.get(..VNET_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Writes the header into the first [`VNET_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// The header lengths of a TCP/IPv4 packet that may be cut or joined: not
/// a fragment, headers complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tcp4 {
    /// IPv4 header length.
    ihl: usize,
    /// TCP header length.
    thl: usize,
}

impl Tcp4 {
    fn parse(packet: &[u8]) -> Option<Tcp4> {
        let first = *packet.first()?;
        let ihl = usize::from(first & 0x0f) * 4;
        if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 20 || packet[9] != TCP {
            return None;
        }
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff;
        let thl = usize::from(packet[ihl + 12] >> 4) * 4;
        if fragment != 0 || thl < 20 || packet.len() < ihl + thl || total > packet.len() || total < ihl + thl
        {
            return None;
        }
        Some(Tcp4 { ihl, thl })
    }

    fn headers(self) -> usize {
        self.ihl + self.thl
    }
}

/// The pseudo-header sum of a TCP/IPv4 segment of `tcp_len` bytes, not
/// folded.
fn pseudo_sum(ip: &[u8], tcp_len: usize) -> u64 {
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip[12..20]);
    pseudo[9] = TCP;
    pseudo[10..12].copy_from_slice(&(tcp_len as u16).to_be_bytes());
    checksum_no_fold(&pseudo, 0)
}

/// Sets the IPv4 header's total length and recomputes its checksum.
fn finish_ip(ip: &mut [u8], ihl: usize, total: usize) {
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip[10..12].fill(0);
    let sum = !checksum(&ip[..ihl], 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// Completes the TCP or UDP checksum of a packet that the kernel left
/// partial (`NEEDS_CSUM` without GSO): the sum from `csum_start` to the end,
/// stored at `csum_start + csum_offset`. False if they fall outside it.
pub fn complete_checksum(packet: &mut [u8], header: &VnetHeader) -> bool {
    let start = usize::from(header.csum_start);
    let at = start + usize::from(header.csum_offset);
    if start >= packet.len() || at + 2 > packet.len() {
        return false;
    }
    let sum = !checksum(&packet[start..], 0);
    // UDP sends a computed zero as all ones (zero means "no checksum").
    let sum = if sum == 0 && packet.get(9) == Some(&UDP) { 0xffff } else { sum };
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    true
}

/// The IPv4 and TCP header length of a TCP/IPv4 packet that may be cut.
pub fn tcp4_headers(packet: &[u8]) -> Option<usize> {
    Tcp4::parse(packet).map(Tcp4::headers)
}

/// Computes the TCP checksum of a TCP/IPv4 packet in full, whatever its
/// field held (a sender's partial sum, or a complete one). False, and
/// nothing changed, if the packet is not TCP/IPv4.
pub fn fill_tcp4_checksum(packet: &mut [u8]) -> bool {
    let Some(tcp) = Tcp4::parse(packet) else { return false };
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let pseudo = pseudo_sum(packet, total - tcp.ihl);
    let segment = &mut packet[tcp.ihl..total];
    segment[16..18].fill(0);
    let sum = !checksum(segment, pseudo);
    segment[16..18].copy_from_slice(&sum.to_be_bytes());
    true
}

/// A hash of an IPv4 packet's flow, the same both ways: its addresses,
/// protocol and (for TCP and UDP, not fragments) ports. Picks the TUN queue
/// a flow is written to, so the kernel sends the flow's replies through
/// that queue too. Anything else hashes to 0.
pub fn symmetric_flow_hash(packet: &[u8]) -> u32 {
    let Some(&first) = packet.first() else { return 0 };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl {
        return 0;
    }
    let word = |at: usize| u32::from_be_bytes([packet[at], packet[at + 1], packet[at + 2], packet[at + 3]]);
    let proto = packet[9];
    let fragment = u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0;
    let ports = match proto {
        TCP | UDP if !fragment && packet.len() >= ihl + 4 => {
            let (a, b) = (word(ihl) >> 16, word(ihl) & 0xffff);
            a ^ b
        }
        _ => 0,
    };
    let mixed = (word(12) ^ word(16) ^ (ports << 16) ^ ports ^ u32::from(proto)).wrapping_mul(0x9e37_79b1);
    mixed ^ (mixed >> 16)
}

/// A TSO super-packet cut into segments: for each, its headers (a prefix,
/// then its own IPv4 and TCP headers) and where its payload lies in the
/// super-packet.
#[derive(Debug, Default)]
pub struct Segments {
    headers: Vec<u8>,
    stride: usize,
    payloads: Vec<Range<usize>>,
}

impl Segments {
    /// Cuts the TCP/IPv4 `packet` into segments of `gso_size` payload
    /// bytes, as the kernel's TSO would: sequence numbers and IP ids
    /// counted up, FIN and PSH on the last segment only, CWR on the first
    /// only. Each segment's headers start with `prefix`. With
    /// `full_checksums`, each segment's TCP checksum is computed; without,
    /// it holds the pseudo-header sum for the receiver to complete. False
    /// (nothing cut) if `packet` is not TCP/IPv4 with a payload.
    pub fn cut(&mut self, packet: &[u8], gso_size: usize, prefix: &[u8], full_checksums: bool) -> bool {
        self.headers.clear();
        self.payloads.clear();
        let Some(tcp) = Tcp4::parse(packet) else { return false };
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let hl = tcp.headers();
        if gso_size == 0 || total <= hl {
            return false;
        }
        let count = (total - hl).div_ceil(gso_size);
        self.stride = prefix.len() + hl;
        self.headers.resize(count * self.stride, 0);
        let id = u16::from_be_bytes([packet[4], packet[5]]);
        let seq = u32::from_be_bytes(packet[tcp.ihl + 4..tcp.ihl + 8].try_into().expect("4 bytes"));
        let flags = packet[tcp.ihl + 13];
        for (i, out) in self.headers.chunks_exact_mut(self.stride).enumerate() {
            let start = hl + i * gso_size;
            let end = (start + gso_size).min(total);
            let (head, ip) = out.split_at_mut(prefix.len());
            head.copy_from_slice(prefix);
            ip.copy_from_slice(&packet[..hl]);
            ip[4..6].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
            finish_ip(ip, tcp.ihl, hl + end - start);
            let (ip_header, th) = ip.split_at_mut(tcp.ihl);
            th[4..8].copy_from_slice(&seq.wrapping_add((i * gso_size) as u32).to_be_bytes());
            let mut segment_flags = flags;
            if i + 1 < count {
                segment_flags &= !(FIN | PSH);
            }
            if i > 0 {
                segment_flags &= !CWR;
            }
            th[13] = segment_flags;
            th[16..18].fill(0);
            let pseudo = pseudo_sum(ip_header, tcp.thl + end - start);
            let sum = if full_checksums {
                !checksum(&packet[start..end], checksum_no_fold(th, pseudo))
            } else {
                checksum(&[], pseudo)
            };
            th[16..18].copy_from_slice(&sum.to_be_bytes());
            self.payloads.push(start..end);
        }
        true
    }

    /// How many segments.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Segment `i`'s headers.
    pub fn header(&self, i: usize) -> &[u8] {
        &self.headers[i * self.stride..(i + 1) * self.stride]
    }

    /// Where segment `i`'s payload lies in the super-packet.
    pub fn payload(&self, i: usize) -> Range<usize> {
        self.payloads[i].clone()
    }

    /// The length of every segment but the last (headers and payload).
    pub fn segment_len(&self) -> usize {
        self.stride + self.payloads.first().map_or(0, |p| p.len())
    }
}

/// Where a joined segment's payload lies: buffer `buf`, bytes `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Which receive buffer.
    pub buf: usize,
    /// Where in it.
    pub range: Range<usize>,
}

/// One packet being joined: the first segment's headers behind a
/// virtio-net header, and the payloads.
#[derive(Debug)]
struct Joined {
    to: EndpointId,
    header: [u8; MAX_HEADER],
    tcp: Tcp4,
    pieces: Vec<Piece>,
    gso_size: usize,
    payload: usize,
    next_seq: u32,
    /// Takes no more segments (a shorter one, a PSH, a control flag).
    closed: bool,
}

impl Joined {
    fn ip(&self) -> &[u8] {
        &self.header[VNET_LEN..VNET_LEN + self.tcp.headers()]
    }

    /// Whether `packet` (headers `tcp`, sequence number `seq`) continues
    /// this packet: the same flow and headers but the sequence number, the
    /// next bytes, and room for them.
    fn continues(&self, packet: &[u8], tcp: Tcp4, seq: u32, payload: usize) -> bool {
        let ip = self.ip();
        let (ihl, hl) = (tcp.ihl, tcp.headers());
        !self.closed
            && tcp == self.tcp
            && seq == self.next_seq
            && payload > 0
            && payload <= self.gso_size
            && packet[ihl + 13] & !PSH == ACK
            && self.pieces.len() < MAX_JOINED
            && hl + self.payload + payload <= MAX_PACKET
            // TOS, DF and TTL; ack number and data offset; options (the
            // addresses and ports are the flow's, which `push` matched).
            && packet[1] == ip[1]
            && packet[6] == ip[6]
            && packet[8] == ip[8]
            && packet[ihl + 8..ihl + 13] == ip[ihl + 8..ihl + 13]
            && packet[ihl + 20..hl] == ip[ihl + 20..hl]
    }

    fn add(&mut self, packet: &[u8], piece: Piece, payload: usize) {
        self.pieces.push(piece);
        self.payload += payload;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        if payload < self.gso_size || packet[self.tcp.ihl + 13] & PSH != 0 {
            let flags = VNET_LEN + self.tcp.ihl + 13;
            self.header[flags] |= packet[self.tcp.ihl + 13] & PSH;
            self.closed = true;
        }
    }
}

/// Writes a joined packet's final headers: virtio-net (partial checksum,
/// TSO if more than one segment), IPv4 length and checksum, the TCP
/// pseudo-header sum. Returns them.
fn finish(
    header: &mut [u8; MAX_HEADER],
    tcp: Tcp4,
    gso_size: usize,
    payload: usize,
    segments: usize,
) -> &[u8] {
    let Tcp4 { ihl, thl } = tcp;
    let hl = ihl + thl;
    let joined = segments > 1;
    let vnet = VnetHeader {
        flags: NEEDS_CSUM,
        gso_type: if joined { GSO_TCPV4 } else { GSO_NONE },
        hdr_len: hl as u16,
        gso_size: if joined { gso_size as u16 } else { 0 },
        csum_start: ihl as u16,
        csum_offset: 16,
    };
    vnet.emit(header);
    let ip = &mut header[VNET_LEN..VNET_LEN + hl];
    finish_ip(ip, ihl, hl + payload);
    let sum = checksum(&[], pseudo_sum(ip, thl + payload));
    ip[ihl + 16..ihl + 18].copy_from_slice(&sum.to_be_bytes());
    &header[..VNET_LEN + hl]
}

/// TCP segments received for local endpoints, joined per flow into as few
/// TUN writes as the kernel's GRO would make. Buffers are reused.
#[derive(Debug, Default)]
pub struct Coalescer {
    joined: Vec<Joined>,
    active: usize,
}

impl Coalescer {
    /// Takes the TCP/IPv4 `packet` for endpoint `to`, whose bytes lie at
    /// `at` in receive buffer `buf`. False (nothing taken) if it is not
    /// TCP/IPv4 without IP options: it is to be written some other way.
    pub fn push(&mut self, to: EndpointId, packet: &[u8], buf: usize, at: usize) -> bool {
        let Some(tcp) = Tcp4::parse(packet) else { return false };
        if tcp.ihl != 20 {
            return false;
        }
        let hl = tcp.headers();
        let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
        let payload = total - hl;
        let seq = u32::from_be_bytes(packet[tcp.ihl + 4..tcp.ihl + 8].try_into().expect("4 bytes"));
        let piece = Piece { buf, range: at + hl..at + total };
        let flow =
            |j: &Joined| j.to == to && j.ip()[12..20] == packet[12..20] && j.ip()[20..24] == packet[20..24];
        if let Some(last) = self.joined[..self.active].iter_mut().rev().find(|j| flow(j)) {
            if last.continues(packet, tcp, seq, payload) {
                last.add(packet, piece, payload);
                return true;
            }
            last.closed = true;
        }
        if self.active == self.joined.len() {
            self.joined.push(Joined {
                to,
                header: [0; MAX_HEADER],
                tcp,
                pieces: Vec::new(),
                gso_size: 0,
                payload: 0,
                next_seq: 0,
                closed: false,
            });
        }
        let j = &mut self.joined[self.active];
        self.active += 1;
        j.to = to;
        j.tcp = tcp;
        j.header[VNET_LEN..VNET_LEN + hl].copy_from_slice(&packet[..hl]);
        j.pieces.clear();
        j.gso_size = payload;
        j.payload = 0;
        j.next_seq = seq;
        j.closed = payload == 0
            || packet[tcp.ihl + 13] & (FIN | SYN | RST | CWR) != 0
            || packet[tcp.ihl + 13] & ACK == 0;
        if j.closed {
            j.pieces.push(piece);
            j.payload = payload;
        } else {
            j.add(packet, piece, payload);
        }
        true
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.active == 0
    }

    /// The joined packets in the order their first segments came, each as
    /// its endpoint, its headers (virtio-net header first) and its
    /// payloads; then forgets them.
    pub fn drain(&mut self) -> impl Iterator<Item = (EndpointId, &[u8], &[Piece])> {
        let active = std::mem::take(&mut self.active);
        self.joined[..active].iter_mut().map(|j| {
            let Joined { to, header, tcp, pieces, gso_size, payload, .. } = j;
            (*to, finish(header, *tcp, *gso_size, *payload, pieces.len()), pieces.as_slice())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A TCP/IPv4 packet from 10.0.1.2:40000 to 10.0.1.3:5201 with a
    /// timestamp option, sequence `seq`, `flags` and `payload`.
    fn packet(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let hl = 20 + 32;
        let mut p = vec![0u8; hl];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&[10, 0, 1, 2]);
        p[16..20].copy_from_slice(&[10, 0, 1, 3]);
        let t = &mut p[20..];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&99u32.to_be_bytes());
        t[12] = 8 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        finish_ip(&mut p, 20, hl + payload.len());
        p
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Whether a segment's IPv4 and TCP checksums are right.
    fn checksums_valid(p: &[u8]) -> bool {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        checksum(&p[..ihl], 0) == 0xffff && checksum(&p[ihl..], pseudo_sum(p, p.len() - ihl)) == 0xffff
    }

    #[test]
    fn a_super_packet_is_cut_as_tso_would_and_joined_back_whole() {
        let data = payload(10_000);
        let sup = packet(1000, ACK | PSH | FIN, &data);
        let mut segments = Segments::default();
        assert!(segments.cut(&sup, 1400, b"prefix", true));
        assert_eq!(segments.len(), 8);
        let mut wire = Vec::new();
        for i in 0..segments.len() {
            let header = segments.header(i);
            assert_eq!(&header[..6], b"prefix");
            let mut seg = header[6..].to_vec();
            seg.extend_from_slice(&sup[segments.payload(i)]);
            assert!(checksums_valid(&seg), "segment {i}");
            assert_eq!(u32::from_be_bytes(seg[24..28].try_into().unwrap()), 1000 + 1400 * i as u32);
            assert_eq!(u16::from_be_bytes([seg[4], seg[5]]), 7 + i as u16, "ids count up");
            let last = i + 1 == segments.len();
            assert_eq!(seg[33], if last { ACK | PSH | FIN } else { ACK }, "FIN and PSH on the last only");
            assert_eq!(seg.len(), if last { 52 + 10_000 - 7 * 1400 } else { 52 + 1400 });
            wire.push(seg);
        }
        assert_eq!(segments.segment_len(), 6 + 52 + 1400);

        // Joined again (but the FIN, which ends the flow's data alone).
        let mut c = Coalescer::default();
        let mut bufs = Vec::new();
        for (i, seg) in wire.iter().enumerate() {
            let mut seg = seg.clone();
            if i + 1 == wire.len() {
                seg[33] = ACK | PSH;
                seg[36..38].fill(0);
            }
            assert!(c.push(EndpointId(1), &seg, i, 0));
            bufs.push(seg);
        }
        let out: Vec<_> = c.drain().map(|(to, h, p)| (to, h.to_vec(), p.to_vec())).collect();
        assert_eq!(out.len(), 1, "one write");
        let (to, header, pieces) = &out[0];
        assert_eq!(*to, EndpointId(1));
        let vnet = VnetHeader::parse(header).unwrap();
        assert_eq!(
            vnet,
            VnetHeader {
                flags: NEEDS_CSUM,
                gso_type: GSO_TCPV4,
                hdr_len: 52,
                gso_size: 1400,
                csum_start: 20,
                csum_offset: 16
            }
        );
        let mut joined = header[VNET_LEN..].to_vec();
        for p in pieces {
            joined.extend_from_slice(&bufs[p.buf][p.range.clone()]);
        }
        assert_eq!(&joined[52..], &data[..], "the payload, in order");
        assert_eq!(usize::from(u16::from_be_bytes([joined[2], joined[3]])), joined.len());
        assert_eq!(checksum(&joined[..20], 0), 0xffff, "IPv4 checksum");
        assert_eq!(joined[33], ACK | PSH, "the last segment's PSH");
        // Partial: the field holds the pseudo-header sum, so that summing
        // the TCP bytes completes it.
        let partial = u16::from_be_bytes([joined[36], joined[37]]);
        assert_eq!(partial, checksum(&[], pseudo_sum(&joined, joined.len() - 20)));
        joined[36..38].fill(0);
        let full = !checksum(&joined[20..], pseudo_sum(&joined, joined.len() - 20));
        let mut expect = sup.clone();
        expect[33] = ACK | PSH;
        expect[36..38].fill(0);
        assert_eq!(full, !checksum(&expect[20..], pseudo_sum(&expect, expect.len() - 20)));
    }

    #[test]
    fn without_full_checksums_segments_hold_the_pseudo_header_sum() {
        let sup = packet(1, ACK, &payload(3000));
        let mut segments = Segments::default();
        assert!(segments.cut(&sup, 1448, &[], false));
        for i in 0..segments.len() {
            let mut seg = segments.header(i).to_vec();
            seg.extend_from_slice(&sup[segments.payload(i)]);
            let field = u16::from_be_bytes([seg[36], seg[37]]);
            assert_eq!(field, checksum(&[], pseudo_sum(&seg, seg.len() - 20)));
        }
    }

    #[test]
    fn only_consecutive_segments_of_one_flow_with_equal_headers_are_joined() {
        let seg = |seq, flags| packet(seq, flags, &payload(100));
        let mut other_flow = seg(0, ACK);
        other_flow[20] ^= 1;
        // The same segments for two endpoints: never joined across them.
        let mut c = Coalescer::default();
        for (i, p) in [seg(0, ACK), seg(100, ACK), seg(200, ACK)].iter().enumerate() {
            assert!(c.push(EndpointId(i as u32), p, i, 0));
        }
        assert_eq!(c.drain().count(), 3);
        let mut c = Coalescer::default();
        let flow = [
            seg(0, ACK),
            seg(100, ACK),
            other_flow,
            seg(200, ACK),
            seg(400, ACK),
            seg(500, ACK | PSH),
            seg(600, ACK),
            seg(700, ACK | SYN),
            seg(800, ACK),
            packet(900, ACK, &payload(50)),
            packet(950, ACK, &payload(50)),
        ];
        for (i, p) in flow.iter().enumerate() {
            assert!(c.push(EndpointId(1), p, i, 0));
        }
        let writes: Vec<Vec<usize>> = c.drain().map(|(_, _, p)| p.iter().map(|p| p.buf).collect()).collect();
        assert_eq!(
            writes,
            vec![
                vec![0, 1, 3], // the other flow's segment between them does not stop the join
                vec![2],       // the other flow
                vec![4, 5],    // a gap in sequence starts anew; PSH ends it
                vec![6],       // followed by a SYN, which goes alone
                vec![7],
                vec![8, 9], // a shorter segment than the first ends a join
                vec![10],
            ]
        );
    }

    #[test]
    fn a_partial_checksum_is_filled_in_full() {
        let sup = packet(1, ACK, &payload(3000));
        let mut segments = Segments::default();
        assert!(segments.cut(&sup, 1448, &[], false));
        let mut seg = segments.header(0).to_vec();
        seg.extend_from_slice(&sup[segments.payload(0)]);
        assert!(!checksums_valid(&seg), "partial");
        assert!(fill_tcp4_checksum(&mut seg));
        assert!(checksums_valid(&seg));
        let mut udp = seg.clone();
        udp[9] = 17;
        assert!(!fill_tcp4_checksum(&mut udp));
    }

    #[test]
    fn a_flow_hashes_alike_both_ways_and_flows_spread() {
        let forward = packet(7, ACK, b"x");
        let mut back = forward.clone();
        back[12..16].copy_from_slice(&forward[16..20]);
        back[16..20].copy_from_slice(&forward[12..16]);
        back[20..22].copy_from_slice(&forward[22..24]);
        back[22..24].copy_from_slice(&forward[20..22]);
        assert_eq!(symmetric_flow_hash(&forward), symmetric_flow_hash(&back));
        let queues: std::collections::HashSet<u32> = (0..64u16)
            .map(|port| {
                let mut p = forward.clone();
                p[20..22].copy_from_slice(&(40_000 + port).to_be_bytes());
                symmetric_flow_hash(&p) % 2
            })
            .collect();
        assert_eq!(queues.len(), 2, "64 flows over two queues use both");
        assert_eq!(symmetric_flow_hash(&[]), 0);
        assert_eq!(symmetric_flow_hash(&forward[..19]), 0);
    }

    #[test]
    fn what_is_not_tcp_over_ipv4_is_refused() {
        let mut c = Coalescer::default();
        let mut udp = packet(0, ACK, &payload(10));
        udp[9] = 17;
        assert!(!c.push(EndpointId(1), &udp, 0, 0));
        let mut fragment = packet(0, ACK, &payload(10));
        fragment[6] = 0x20;
        assert!(!c.push(EndpointId(1), &fragment, 0, 0));
        let mut short = packet(0, ACK, &payload(10));
        short[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert!(!c.push(EndpointId(1), &short, 0, 0), "total length below the headers");
        assert!(!Segments::default().cut(&short, 1400, &[], false));
        assert!(c.is_empty());
    }

    proptest! {
        #[test]
        fn any_bytes_are_cut_or_joined_or_refused_without_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            gso in 0usize..100,
        ) {
            let mut c = Coalescer::default();
            let taken = c.push(EndpointId(1), &bytes, 0, 0);
            for (_, header, pieces) in c.drain() {
                prop_assert!(taken && header.len() >= VNET_LEN + 40);
                for p in pieces {
                    prop_assert!(p.range.end <= bytes.len());
                }
            }
            let mut s = Segments::default();
            if s.cut(&bytes, gso, &[0; 4], true) {
                for i in 0..s.len() {
                    prop_assert!(s.payload(i).end <= bytes.len());
                }
            }
            let mut copy = bytes.clone();
            if let Some(h) = VnetHeader::parse(&bytes) {
                let _ = complete_checksum(&mut copy, &h);
            }
        }
    }
}
