//! What [`respond`](crate::respond) decides, and the classes the server counts it by.

/// The UDP answer size the server sends and advertises by default: 1232 bytes
/// fits an IPv6 packet on a 1280-byte path without fragmentation (the 2020 DNS
/// flag day value), and our overlay MTU of 1450 with room to spare.
pub const DEFAULT_MAX_UDP_PAYLOAD: u16 = 1232;

/// How a query arrived, which bounds the size of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A UDP datagram. `max_payload` is the largest UDP answer this server
    /// sends; the answer also stays within what the client can take (its EDNS
    /// payload size, 512 bytes without EDNS). A larger answer is cut and
    /// marked truncated so that the client retries over TCP.
    Udp {
        /// The server's own UDP answer limit (at least 512 is used).
        max_payload: u16,
    },
    /// A length-prefixed message on a TCP connection: up to 65535 bytes. An
    /// EDNS answer advertises [`DEFAULT_MAX_UDP_PAYLOAD`] for later UDP queries.
    Tcp,
}

/// What to do with one message received from a task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Send [`Answer::message`] back to the client.
    Answer(Answer),
    /// Not a name of the directory: send the query upstream. The kind is the
    /// query's type, for the counters.
    Forward(QueryKind),
    /// Send nothing: no answer can or should go back. Counted by reason.
    Drop(DropReason),
}

/// A response built by the resolver itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The response, ready to send (without the TCP length prefix).
    pub message: Vec<u8>,
    /// The type asked for; `None` when the question could not be read.
    pub kind: Option<QueryKind>,
    /// The response code in `message`, including EDNS extended codes.
    pub rcode: Rcode,
    /// Whether answer records were cut to fit and TC was set.
    pub truncated: bool,
}

/// The classes of query type the server counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueryKind {
    /// IPv4 address.
    A,
    /// IPv6 address (never in the directory: answered empty or forwarded).
    Aaaa,
    /// Reverse lookup.
    Ptr,
    /// Service location.
    Srv,
    /// Any other type, ANY included.
    Other,
}

impl QueryKind {
    /// Number of kinds, for counter arrays.
    pub const COUNT: usize = 5;
    /// Every kind, in counter order.
    pub const ALL: [QueryKind; QueryKind::COUNT] =
        [QueryKind::A, QueryKind::Aaaa, QueryKind::Ptr, QueryKind::Srv, QueryKind::Other];

    /// The name shown in statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryKind::A => "A",
            QueryKind::Aaaa => "AAAA",
            QueryKind::Ptr => "PTR",
            QueryKind::Srv => "SRV",
            QueryKind::Other => "other",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// DNS response codes, as far as the server counts them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rcode {
    /// 0
    NoError,
    /// 1: the query could not be parsed.
    FormErr,
    /// 2: forwarding failed, timed out or was refused by the bound.
    ServFail,
    /// 3: the name does not exist (only relayed: the resolver itself forwards unknown names).
    NxDomain,
    /// 4: an opcode other than QUERY.
    NotImp,
    /// 5
    Refused,
    /// 16 (extended, in the OPT record): an EDNS version other than 0.
    BadVers,
    /// Anything else (relayed from upstream).
    Other,
}

impl Rcode {
    /// Number of codes, for counter arrays.
    pub const COUNT: usize = 8;
    /// Every code, in counter order.
    pub const ALL: [Rcode; Rcode::COUNT] = [
        Rcode::NoError,
        Rcode::FormErr,
        Rcode::ServFail,
        Rcode::NxDomain,
        Rcode::NotImp,
        Rcode::Refused,
        Rcode::BadVers,
        Rcode::Other,
    ];

    /// The name shown in statistics, as dig prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rcode::NoError => "NOERROR",
            Rcode::FormErr => "FORMERR",
            Rcode::ServFail => "SERVFAIL",
            Rcode::NxDomain => "NXDOMAIN",
            Rcode::NotImp => "NOTIMP",
            Rcode::Refused => "REFUSED",
            Rcode::BadVers => "BADVERS",
            Rcode::Other => "other",
        }
    }

    /// The code in a message header (the low four bits; an extended code in an
    /// OPT record is not looked for). `None` for a message shorter than a header.
    pub fn of_message(message: &[u8]) -> Option<Rcode> {
        let flags = message.get(3)?;
        Some(match flags & 0x0f {
            0 => Rcode::NoError,
            1 => Rcode::FormErr,
            2 => Rcode::ServFail,
            3 => Rcode::NxDomain,
            4 => Rcode::NotImp,
            5 => Rcode::Refused,
            _ => Rcode::Other,
        })
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a message got no response (or a response could not be sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than a DNS header (12 bytes): there is no id to answer to.
    TooShort,
    /// Longer than a DNS message can be (65535 bytes), or than the UDP
    /// receive buffer: it was cut by the kernel, so answering it would answer
    /// something the client did not send.
    TooLong,
    /// A response (QR set) instead of a query: answering responses lets two
    /// servers bounce errors at each other forever.
    Response,
    /// A TCP connection beyond the per-sandbox bound, closed at once.
    TcpConnectionLimit,
    /// A TCP connection closed because a message did not arrive, or could not
    /// be written, within the idle timeout.
    TcpTimeout,
    /// A TCP connection that ended in the middle of a message.
    TcpCut,
    /// A datagram on a forwarding socket that is not the reply to the query
    /// sent (wrong id or question, or not a response): ignored, the forward
    /// keeps waiting for the real reply.
    UpstreamMismatch,
    /// The response could not be sent to the client.
    SendFailed,
}

impl DropReason {
    /// Number of reasons, for counter arrays.
    pub const COUNT: usize = 8;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::TooShort,
        DropReason::TooLong,
        DropReason::Response,
        DropReason::TcpConnectionLimit,
        DropReason::TcpTimeout,
        DropReason::TcpCut,
        DropReason::UpstreamMismatch,
        DropReason::SendFailed,
    ];

    /// The name shown in statistics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::TooLong => "too_long",
            DropReason::Response => "response",
            DropReason::TcpConnectionLimit => "tcp_connection_limit",
            DropReason::TcpTimeout => "tcp_timeout",
            DropReason::TcpCut => "tcp_cut",
            DropReason::UpstreamMismatch => "upstream_mismatch",
            DropReason::SendFailed => "send_failed",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::{DropReason, QueryKind, Rcode};

    #[test]
    fn all_lists_are_in_index_order() {
        assert!(QueryKind::ALL.iter().enumerate().all(|(i, k)| k.index() == i));
        assert!(Rcode::ALL.iter().enumerate().all(|(i, r)| r.index() == i));
        assert!(DropReason::ALL.iter().enumerate().all(|(i, r)| r.index() == i));
    }

    #[test]
    fn rcode_of_message_reads_the_low_bits() {
        assert_eq!(Rcode::of_message(&[0, 1, 0x81, 0x83]), Some(Rcode::NxDomain));
        assert_eq!(Rcode::of_message(&[0, 1, 0x81, 0x80]), Some(Rcode::NoError));
        assert_eq!(Rcode::of_message(&[0, 1]), None);
    }
}
