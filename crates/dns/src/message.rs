//! Building and checking wire messages: response skeletons, size-bounded
//! encoding, header-only errors, and matching an upstream reply to its query.
//!
//! Everything here is infallible towards the caller: when a message cannot be
//! encoded the fallback is a header-only response built from the query's bytes,
//! so a client always hears back when it sent something with an id.

use hickory_proto::op::{Edns, Header, Message, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};

use crate::Rcode;

/// Size of the fixed DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// Largest DNS message: TCP frames carry a 16-bit length.
pub(crate) const MAX_MESSAGE_LEN: usize = 65_535;
/// The UDP limit of a client that did not send EDNS (RFC 1035 section 4.2.1).
pub(crate) const CLASSIC_UDP_LEN: usize = 512;
/// Encoded size of the OPT record we add: root name, type, class, TTL and an
/// empty RDATA length (we send no EDNS options).
const OPT_RECORD_LEN: usize = 11;

/// A response to `request` with its id, opcode, RD and CD, RA set (we
/// forward), the question echoed and, when the request had EDNS, an OPT record
/// advertising `advertised_payload` and echoing the DO bit (RFC 3225).
pub(crate) fn response_to(request: &Message, rcode: ResponseCode, advertised_payload: u16) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.recursion_available = true;
    response.metadata.response_code = rcode;
    response.add_queries(request.queries.iter().cloned());
    if let Some(asked) = &request.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(advertised_payload).set_dnssec_ok(asked.flags().dnssec_ok);
        response.set_edns(edns);
    }
    response
}

/// Encodes `response` within `limit` bytes. Additional records that do not fit
/// are left out silently (RFC 2181 section 9: TC is not for optional data);
/// answer records that do not fit are cut, the additional section emptied and
/// TC set so that the client retries over TCP. The OPT record always stays.
/// Returns the bytes and whether TC was set, or `None` if even the question
/// cannot be encoded (not reachable with a decoded question and `limit` >= 512).
pub(crate) fn encode_within(mut response: Message, limit: usize) -> Option<(Vec<u8>, bool)> {
    let whole = response.to_vec().ok()?;
    if whole.len() <= limit {
        return Some((whole, false));
    }
    // Find how many records fit before the OPT record, which must stay: encode
    // without it under a reduced budget and read the counts the encoder wrote.
    let edns = response.edns.take();
    let budget = limit.saturating_sub(if edns.is_some() { OPT_RECORD_LEN } else { 0 });
    let mut buffer = Vec::with_capacity(budget);
    let mut encoder = BinEncoder::new(&mut buffer);
    encoder.set_max_size(u16::try_from(budget).unwrap_or(u16::MAX));
    response.emit(&mut encoder).ok()?;
    let count = |at: usize| buffer.get(at..at + 2).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let (answers, authorities, additionals) = (count(6)?, count(8)?, count(10)?);

    let answers_complete = answers == response.answers.len() && authorities == response.authorities.len();
    response.answers.truncate(answers);
    response.authorities.truncate(authorities);
    if answers_complete {
        response.additionals.truncate(additionals);
    } else {
        response.additionals.clear();
        response.metadata.truncation = true;
    }
    response.edns = edns;
    let bytes = response.to_vec().ok()?;
    Some((bytes, !answers_complete))
}

/// A response carrying only a header: the query's id, opcode and RD, RA set,
/// `rcode`, no sections. Used when the query cannot be parsed far enough to
/// echo its question. Needs at least the query's first three bytes.
pub(crate) fn header_only(query: &[u8], rcode: Rcode) -> Option<Vec<u8>> {
    let (id, flags) = (query.get(0..2)?, query.get(2)?);
    let code = match rcode {
        Rcode::NoError => 0,
        Rcode::FormErr => 1,
        Rcode::ServFail => 2,
        Rcode::NxDomain => 3,
        Rcode::NotImp => 4,
        Rcode::Refused => 5,
        Rcode::BadVers | Rcode::Other => 2,
    };
    let mut message = vec![0u8; HEADER_LEN];
    message[0..2].copy_from_slice(id);
    message[2] = 0x80 | (flags & 0x78) | (flags & 0x01);
    message[3] = 0x80 | code;
    Some(message)
}

/// A response without records to a query that [`respond`](crate::respond)
/// accepted: SERVFAIL when forwarding failed, or an empty truncated answer
/// when the upstream's reply was too large to relay over UDP.
pub(crate) fn reply_without_records(
    query: &[u8],
    rcode: Rcode,
    truncated: bool,
    advertised_payload: u16,
) -> Option<Vec<u8>> {
    let Ok(request) = Message::from_vec(query) else {
        return header_only(query, rcode);
    };
    let code = match rcode {
        Rcode::NoError => ResponseCode::NoError,
        Rcode::FormErr => ResponseCode::FormErr,
        Rcode::NxDomain => ResponseCode::NXDomain,
        Rcode::NotImp => ResponseCode::NotImp,
        Rcode::Refused => ResponseCode::Refused,
        Rcode::BadVers => ResponseCode::BADVERS,
        Rcode::ServFail | Rcode::Other => ResponseCode::ServFail,
    };
    let mut response = response_to(&request, code, advertised_payload);
    response.metadata.truncation = truncated;
    response.to_vec().ok().or_else(|| header_only(query, rcode))
}

/// Overwrites a message's id (the first two bytes).
pub(crate) fn set_id(message: &mut [u8], id: u16) {
    if let Some(slot) = message.get_mut(0..2) {
        slot.copy_from_slice(&id.to_be_bytes());
    }
}

/// Whether `reply` answers `sent`: same id, QR set, and the same question
/// (name compared case-insensitively). An error reply may leave the question
/// out, as some servers do for FORMERR or SERVFAIL.
pub(crate) fn is_reply_to(sent: &[u8], reply: &[u8]) -> bool {
    let (Some(sent_id), Some(reply_id), Some(flags)) = (sent.get(0..2), reply.get(0..2), reply.get(2)) else {
        return false;
    };
    if sent_id != reply_id || flags & 0x80 == 0 || reply.len() < HEADER_LEN {
        return false;
    }
    let Some(Some(asked)) = first_question(sent) else {
        return false;
    };
    match first_question(reply) {
        Some(Some(answered)) => {
            answered.name() == asked.name()
                && answered.query_type() == asked.query_type()
                && answered.query_class() == asked.query_class()
        }
        Some(None) => Rcode::of_message(reply) != Some(Rcode::NoError),
        None => false,
    }
}

/// The first question of a message: `Some(None)` when the message has none,
/// `None` when it cannot be read.
fn first_question(message: &[u8]) -> Option<Option<Query>> {
    let mut decoder = BinDecoder::new(message);
    let header = Header::read(&mut decoder).ok()?;
    if header.counts.queries == 0 {
        return Some(None);
    }
    Query::read(&mut decoder).ok().map(Some)
}
