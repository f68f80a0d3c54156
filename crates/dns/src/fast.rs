//! The fast path of [`respond`](crate::respond): the query a stub resolver
//! sends (one question, class IN, type A or AAAA, no compression, at most an
//! EDNS OPT record of version 0) for a name of the directory, read and
//! answered straight from and into bytes: the question is copied as it was
//! asked (its case included) and each address is one 16-byte record
//! pointing at it. Anything else, and anything this path is unsure of,
//! returns `None` and takes the general path, which decides with
//! hickory-proto. Both give the same answers (a test compares them).

use crate::message::{CLASSIC_UDP_LEN, HEADER_LEN};
use crate::names::join_labels;
use crate::{Answer, Directory, Outcome, QueryKind, Rcode, Rng, Scope, Transport};

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
/// The length of an A record whose name points at the question.
const A_RECORD_LEN: usize = 16;
/// The length of an OPT record with no options.
const OPT_LEN: usize = 11;

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// Answers the common query, or `None` for the general path.
pub(crate) fn respond(
    dir: &dyn Directory,
    scope: &Scope,
    query: &[u8],
    transport: Transport,
    rng: &mut Rng,
) -> Option<Outcome> {
    // A query (QR 0), opcode QUERY, one question, nothing else but an OPT.
    let (flags, counts) = (query.get(2..4)?, query.get(4..HEADER_LEN)?);
    if flags[0] & 0xf8 != 0 || counts[..6] != [0, 1, 0, 0, 0, 0] || counts[6] != 0 || counts[7] > 1 {
        return None;
    }
    let with_opt = counts[7] == 1;
    // The question: plain labels, then type and class.
    let mut at = HEADER_LEN;
    let mut labels = Vec::with_capacity(4);
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression or an extended label type
        }
        labels.push(query.get(at..at + len)?);
        at += len;
    }
    if at - HEADER_LEN > 255 {
        return None;
    }
    let (qtype, qclass) = (u16_at(query, at)?, u16_at(query, at + 2)?);
    at += 4;
    let question = HEADER_LEN..at;
    if qclass != CLASS_IN || (qtype != TYPE_A && qtype != TYPE_AAAA) {
        return None;
    }
    // The OPT record, version 0, ending the message.
    let theirs = if with_opt {
        let opt = query.get(at..at + OPT_LEN)?;
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT || opt[6] != 0 {
            return None;
        }
        if at + OPT_LEN + rdlen != query.len() {
            return None;
        }
        usize::from(u16::from_be_bytes([opt[3], opt[4]]))
    } else {
        if at != query.len() || (matches!(transport, Transport::Udp { .. }) && query.len() > CLASSIC_UDP_LEN)
        {
            return None;
        }
        CLASSIC_UDP_LEN
    };
    let kind = if qtype == TYPE_A { QueryKind::A } else { QueryKind::Aaaa };
    let name = join_labels(labels.into_iter())?;
    let Some(mut found) = dir.lookup(scope, &name) else {
        return Some(Outcome::Forward(kind));
    };
    if qtype == TYPE_AAAA {
        found.addrs.clear();
    }
    rng.shuffle(&mut found.addrs);
    let (advertised, limit) = match transport {
        Transport::Udp { max_payload } => {
            let ours = max_payload.max(CLASSIC_UDP_LEN as u16);
            (ours, usize::from(ours).min(theirs.max(CLASSIC_UDP_LEN)))
        }
        Transport::Tcp => (crate::DEFAULT_MAX_UDP_PAYLOAD, usize::MAX),
    };
    // As many records as fit; TC when some did not.
    let fixed = at + if with_opt { OPT_LEN } else { 0 };
    let fit = limit.saturating_sub(fixed) / A_RECORD_LEN;
    let truncated = found.addrs.len() > fit;
    found.addrs.truncate(fit);
    let mut out = Vec::with_capacity(fixed + found.addrs.len() * A_RECORD_LEN);
    out.extend_from_slice(&query[..2]);
    // QR, AA, TC as needed, RD as asked; RA (we forward); NOERROR.
    out.push(0x80 | 0x04 | if truncated { 0x02 } else { 0 } | (flags[0] & 0x01));
    out.push(0x80);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(found.addrs.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, u8::from(with_opt)]);
    out.extend_from_slice(&query[question]);
    for addr in &found.addrs {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        out.extend_from_slice(&found.ttl.to_be_bytes());
        out.extend_from_slice(&[0, 4]);
        out.extend_from_slice(&addr.octets());
    }
    if with_opt {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&advertised.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    Some(Outcome::Answer(Answer { message: out, kind: Some(kind), rcode: Rcode::NoError, truncated }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::{Addresses, Proto, SrvTarget};

    struct Names(HashMap<&'static str, Addresses>);

    impl Directory for Names {
        fn lookup(&self, _: &Scope, name: &str) -> Option<Addresses> {
            self.0.get(name).cloned()
        }
        fn reverse(&self, _: &Scope, _: Ipv4Addr) -> Option<(String, u32)> {
            None
        }
        fn srv(&self, _: &Scope, _: &str, _: &str, _: Proto) -> Option<Vec<SrvTarget>> {
            None
        }
    }

    fn names() -> Names {
        let many = (0..100).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
        Names(HashMap::from([
            ("web", Addresses { addrs: vec![[10, 0, 1, 2].into()], ttl: 7 }),
            ("tasks.big", Addresses { addrs: many, ttl: 5 }),
            ("idle", Addresses { addrs: vec![], ttl: 5 }),
        ]))
    }

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    fn decoded(outcome: &Outcome) -> Message {
        let Outcome::Answer(a) = outcome else { panic!("not an answer: {outcome:?}") };
        Message::from_vec(&a.message).unwrap()
    }

    #[test]
    fn the_fast_path_answers_as_the_general_one() {
        let dir = names();
        let scope = Scope { networks: vec![1] };
        let cases = [
            ("web.", RecordType::A, None, Transport::Udp { max_payload: 1232 }),
            ("WeB", RecordType::A, Some(1232), Transport::Udp { max_payload: 1232 }),
            ("web", RecordType::AAAA, Some(4096), Transport::Udp { max_payload: 1232 }),
            ("idle", RecordType::A, None, Transport::Tcp),
            ("tasks.big", RecordType::A, None, Transport::Udp { max_payload: 1232 }),
            ("tasks.big", RecordType::A, Some(1232), Transport::Udp { max_payload: 1232 }),
            ("tasks.big", RecordType::A, None, Transport::Tcp),
        ];
        for (name, qtype, edns, transport) in cases {
            let q = query(name, qtype, edns);
            let fast =
                respond(&dir, &scope, &q, transport, &mut Rng::new(1)).expect("the fast path takes it");
            let general = crate::respond::general(&dir, &scope, &q, transport, &mut Rng::new(1));
            let (f, g) = (decoded(&fast), decoded(&general));
            assert_eq!(f.metadata, g.metadata, "{name} {qtype}");
            assert_eq!(f.queries, g.queries, "{name} {qtype}: the question as asked");
            let sorted = |m: &Message| {
                let mut a: Vec<String> = m.answers.iter().map(|r| r.to_string()).collect();
                a.sort();
                a
            };
            assert_eq!(sorted(&f), sorted(&g), "{name} {qtype}");
            assert_eq!(f.edns.map(|e| e.max_payload()), g.edns.map(|e| e.max_payload()), "{name} {qtype}");
            let (Outcome::Answer(fa), Outcome::Answer(ga)) = (&fast, &general) else { unreachable!() };
            assert_eq!(
                (fa.kind, fa.rcode, fa.truncated),
                (ga.kind, ga.rcode, ga.truncated),
                "{name} {qtype}"
            );
        }
    }

    #[test]
    fn anything_else_takes_the_general_path() {
        let dir = names();
        let scope = Scope { networks: vec![1] };
        let udp = Transport::Udp { max_payload: 1232 };
        // Unknown names are forwarded from here too.
        let unknown =
            respond(&dir, &scope, &query("example.org", RecordType::A, None), udp, &mut Rng::new(1));
        assert!(matches!(unknown, Some(Outcome::Forward(QueryKind::A))));
        for q in [
            query("web", RecordType::SRV, None),
            query("web", RecordType::PTR, None),
            query("web", RecordType::MX, None),
            b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01\x00\x01".to_vec(), // a response
            b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01".to_vec(), // compression
            b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\x00\x00\x01".to_vec(),      // cut short
        ] {
            assert!(respond(&dir, &scope, &q, udp, &mut Rng::new(1)).is_none(), "{q:?}");
        }
        // EDNS version 1 is the general path's BADVERS.
        let mut v1 = query("web", RecordType::A, Some(1232));
        let at = v1.len() - 5;
        v1[at] = 1;
        assert!(respond(&dir, &scope, &v1, udp, &mut Rng::new(1)).is_none());
    }
}
