//! The resolver core: one query in, one [`Outcome`] out.
//!
//! A service-zone handler in front of a forwarder, in the shape of hickory's
//! handler chain: the directory answers names it knows and everything else is
//! passed on upstream. No IO, no clock, no global randomness: the directory,
//! the scope and the generator are arguments, so tests drive it directly.

use std::net::Ipv4Addr;

use hickory_proto::op::{Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, PTR, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tracing::trace;

use crate::message::{self, CLASSIC_UDP_LEN, HEADER_LEN, MAX_MESSAGE_LEN};
use crate::names::{self, SrvName};
use crate::{
    Answer, DEFAULT_MAX_UDP_PAYLOAD, Directory, DropReason, Outcome, QueryKind, Rcode, Rng, Scope, Transport,
};

/// SRV priority and weight of every target: Swarm's tasks of a service are
/// equals, and clients pick among equal weights at random.
const SRV_PRIORITY: u16 = 0;
const SRV_WEIGHT: u16 = 1;

/// Decides what to do with one message received from a task of `scope`.
///
/// Guarantees: never panics, whatever the bytes; answers every message that
/// carries a readable query header (FORMERR, NOTIMP or BADVERS when it cannot
/// serve it) except responses, which are dropped; a UDP answer fits the
/// client's limit (TC set when answer records were cut); the answer's order of
/// addresses depends only on `rng`.
pub fn respond(
    dir: &dyn Directory,
    scope: &Scope,
    query: &[u8],
    transport: Transport,
    rng: &mut Rng,
) -> Outcome {
    if query.len() < HEADER_LEN {
        return Outcome::Drop(DropReason::TooShort);
    }
    if query.len() > MAX_MESSAGE_LEN {
        return Outcome::Drop(DropReason::TooLong);
    }
    if let Some(outcome) = crate::fast::respond(dir, scope, query, transport, rng) {
        return outcome;
    }
    general(dir, scope, query, transport, rng)
}

/// [`respond`] for any message, with hickory-proto (the fast path's
/// reference).
pub(crate) fn general(
    dir: &dyn Directory,
    scope: &Scope,
    query: &[u8],
    transport: Transport,
    rng: &mut Rng,
) -> Outcome {
    let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
        return Outcome::Drop(DropReason::TooShort);
    };
    if header.metadata.message_type == MessageType::Response {
        return Outcome::Drop(DropReason::Response);
    }
    if header.metadata.op_code != OpCode::Query {
        return header_only(query, Rcode::NotImp, None);
    }
    // Several questions in one query have no agreed meaning (RFC 9619).
    if header.counts.queries != 1 {
        return header_only(query, Rcode::FormErr, None);
    }
    let Ok(request) = Message::from_vec(query) else {
        return header_only(query, Rcode::FormErr, None);
    };
    let Some(question) = request.queries.first() else {
        return header_only(query, Rcode::FormErr, None);
    };
    let kind = query_kind(question.query_type());
    // Classic DNS caps UDP messages at 512 bytes; with EDNS the client may send
    // more, up to what the server's receive buffer takes (checked there).
    if matches!(transport, Transport::Udp { .. }) && request.edns.is_none() && query.len() > CLASSIC_UDP_LEN {
        return header_only(query, Rcode::FormErr, Some(kind));
    }

    let (advertised, limit) = match transport {
        Transport::Udp { max_payload } => {
            let ours = usize::from(max_payload).max(CLASSIC_UDP_LEN);
            let theirs = request.edns.as_ref().map_or(CLASSIC_UDP_LEN, |e| usize::from(e.max_payload()));
            (max_payload.max(CLASSIC_UDP_LEN as u16), ours.min(theirs.max(CLASSIC_UDP_LEN)))
        }
        Transport::Tcp => (DEFAULT_MAX_UDP_PAYLOAD, MAX_MESSAGE_LEN),
    };
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        let response = message::response_to(&request, ResponseCode::BADVERS, advertised);
        return finish(query, response, limit, Rcode::BadVers, kind);
    }

    match resolve(dir, scope, question, rng) {
        Resolution::Forward => Outcome::Forward(kind),
        Resolution::Records { answers, additionals } => {
            let mut response = message::response_to(&request, ResponseCode::NoError, advertised);
            response.metadata.authoritative = true;
            response.answers = answers;
            response.additionals = additionals;
            finish(query, response, limit, Rcode::NoError, kind)
        }
    }
}

/// What the directory says about a question.
enum Resolution {
    /// Ours: answer with these records (possibly none: the name exists but has
    /// no data of the asked type).
    Records { answers: Vec<Record>, additionals: Vec<Record> },
    /// Not ours: the upstream resolvers decide.
    Forward,
}

impl Resolution {
    fn answers(answers: Vec<Record>) -> Resolution {
        Resolution::Records { answers, additionals: Vec::new() }
    }
}

fn resolve(dir: &dyn Directory, scope: &Scope, question: &Query, rng: &mut Rng) -> Resolution {
    if question.query_class() != DNSClass::IN {
        return Resolution::Forward;
    }
    let qname = question.name();
    match question.query_type() {
        RecordType::PTR => {
            if let Some(addr) = names::reverse_v4(qname) {
                return reverse(dir, scope, qname, addr);
            }
        }
        RecordType::SRV => {
            if let Some(srv_name) = names::srv_name(qname) {
                return srv(dir, scope, qname, &srv_name);
            }
        }
        _ => {}
    }
    let Some(name) = names::directory_name(qname) else {
        return Resolution::Forward;
    };
    let Some(mut found) = dir.lookup(scope, &name) else {
        trace!(name, "not in the directory");
        return Resolution::Forward;
    };
    match question.query_type() {
        RecordType::A | RecordType::ANY => {
            rng.shuffle(&mut found.addrs);
            let answers = found
                .addrs
                .iter()
                .map(|&addr| Record::from_rdata(qname.clone(), found.ttl, RData::A(A(addr))));
            Resolution::answers(answers.collect())
        }
        // A known name has no data of any other type. Answering AAAA with no
        // records at once keeps getaddrinfo(AF_UNSPEC) from stalling or asking
        // upstream, where the name would be NXDOMAIN.
        _ => Resolution::answers(Vec::new()),
    }
}

fn reverse(dir: &dyn Directory, scope: &Scope, qname: &Name, addr: Ipv4Addr) -> Resolution {
    let Some((target, ttl)) = dir.reverse(scope, addr) else {
        return Resolution::Forward;
    };
    let Some(target) = absolute_name(&target) else {
        return Resolution::Forward;
    };
    Resolution::answers(vec![Record::from_rdata(qname.clone(), ttl, RData::PTR(PTR(target)))])
}

/// SRV records for the targets, with each target's A record in the additional
/// section so that the client can connect without another query.
fn srv(dir: &dyn Directory, scope: &Scope, qname: &Name, srv_name: &SrvName) -> Resolution {
    let Some(targets) = dir.srv(scope, &srv_name.service, &srv_name.port, srv_name.proto) else {
        return Resolution::Forward;
    };
    let mut answers = Vec::with_capacity(targets.len());
    let mut additionals = Vec::with_capacity(targets.len());
    for target in &targets {
        let Some(name) = absolute_name(&target.target) else {
            trace!(target = target.target, "SRV target is not a valid name");
            continue;
        };
        let rdata = SRV::new(SRV_PRIORITY, SRV_WEIGHT, target.port, name.clone());
        answers.push(Record::from_rdata(qname.clone(), target.ttl, RData::SRV(rdata)));
        additionals.push(Record::from_rdata(name, target.ttl, RData::A(A(target.addr))));
    }
    Resolution::Records { answers, additionals }
}

/// A directory name as an absolute DNS name, or `None` if it is not a name.
fn absolute_name(text: &str) -> Option<Name> {
    let mut name = Name::from_ascii(text).ok()?;
    name.set_fqdn(true);
    Some(name)
}

fn query_kind(record_type: RecordType) -> QueryKind {
    match record_type {
        RecordType::A => QueryKind::A,
        RecordType::AAAA => QueryKind::Aaaa,
        RecordType::PTR => QueryKind::Ptr,
        RecordType::SRV => QueryKind::Srv,
        _ => QueryKind::Other,
    }
}

/// Encodes `response` within `limit`; if that fails (not reachable with a
/// decoded question), answers SERVFAIL with a bare header instead.
fn finish(query: &[u8], response: Message, limit: usize, rcode: Rcode, kind: QueryKind) -> Outcome {
    match message::encode_within(response, limit) {
        Some((message, truncated)) => Outcome::Answer(Answer { message, kind: Some(kind), rcode, truncated }),
        None => header_only(query, Rcode::ServFail, Some(kind)),
    }
}

fn header_only(query: &[u8], rcode: Rcode, kind: Option<QueryKind>) -> Outcome {
    match message::header_only(query, rcode) {
        Some(message) => Outcome::Answer(Answer { message, kind, rcode, truncated: false }),
        None => Outcome::Drop(DropReason::TooShort),
    }
}
