//! The resolver core seen from outside: query bytes in, outcome out.

mod common;

use std::collections::HashSet;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use proptest::prelude::*;
use shoal_dns::{
    DEFAULT_MAX_UDP_PAYLOAD, DropReason, Outcome, Proto, QueryKind, Rcode, Rng, Scope, SrvTarget, Transport,
    respond,
};

const UDP: Transport = Transport::Udp { max_payload: DEFAULT_MAX_UDP_PAYLOAD };

fn ask(dir: &FakeDirectory, query: &[u8], transport: Transport) -> Outcome {
    respond(dir, &scope(), query, transport, &mut Rng::new(1))
}

fn web() -> FakeDirectory {
    FakeDirectory::default().name("web", &[ip("10.0.1.2")], 7)
}

#[test]
fn a_for_a_service_answers_its_vip_authoritatively() {
    let outcome = ask(&web(), &bytes(&query("web", RecordType::A)), UDP);
    let Outcome::Answer(answer) = &outcome else { panic!("{outcome:?}") };
    assert_eq!((answer.kind, answer.rcode, answer.truncated), (Some(QueryKind::A), Rcode::NoError, false));

    let response = answered(outcome);
    assert_eq!(response.metadata.id, ID);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative && response.metadata.recursion_available);
    assert!(response.metadata.recursion_desired, "RD is copied from the query");
    let asked = Message::from_vec(&bytes(&query("web", RecordType::A))).unwrap();
    assert_eq!(response.queries, asked.queries, "the question is echoed");
    assert_eq!(a_records(&response), [ip("10.0.1.2")]);
    assert_eq!(response.answers[0].ttl, 7, "the directory's TTL");
    assert!(response.edns.is_none(), "no OPT without one in the query");
}

#[test]
fn aaaa_for_a_known_name_is_noerror_without_records() {
    let response = answered(ask(&web(), &bytes(&query("web", RecordType::AAAA)), UDP));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.metadata.authoritative);
    assert!(response.answers.is_empty());
}

#[test]
fn unknown_names_are_forwarded() {
    let dir = web();
    assert_eq!(
        ask(&dir, &bytes(&query("example.com", RecordType::AAAA)), UDP),
        Outcome::Forward(QueryKind::Aaaa)
    );
    assert_eq!(ask(&dir, &bytes(&query("db", RecordType::A)), UDP), Outcome::Forward(QueryKind::A));
    assert_eq!(
        ask(&dir, &bytes(&query("example.com", RecordType::MX)), UDP),
        Outcome::Forward(QueryKind::Other)
    );
}

#[test]
fn a_name_on_another_network_is_not_visible() {
    let dir = FakeDirectory::default().name_on(NET + 1, "secret", &[ip("10.9.0.2")], 5);
    assert_eq!(ask(&dir, &bytes(&query("secret", RecordType::A)), UDP), Outcome::Forward(QueryKind::A));
    let other = Scope { networks: vec![NET + 1] };
    let outcome = respond(&dir, &other, &bytes(&query("secret", RecordType::A)), UDP, &mut Rng::new(1));
    assert_eq!(a_records(&answered(outcome)), [ip("10.9.0.2")]);
}

#[test]
fn a_service_without_healthy_tasks_is_noerror_not_nxdomain() {
    let dir = FakeDirectory::default().name("tasks.web", &[], 5);
    let response = answered(ask(&dir, &bytes(&query("tasks.web", RecordType::A)), UDP));
    assert_eq!(response.metadata.response_code, ResponseCode::NoError);
    assert!(response.answers.is_empty());
}

#[test]
fn tasks_are_shuffled_by_the_seed_and_keep_their_set() {
    let addrs: Vec<_> = (2..10).map(|i| ip(&format!("10.0.1.{i}"))).collect();
    let dir = FakeDirectory::default().name("tasks.web", &addrs, 5);
    let query = bytes(&query("tasks.web", RecordType::A));
    let order = |seed| a_records(&answered(respond(&dir, &scope(), &query, UDP, &mut Rng::new(seed))));

    let orders: HashSet<Vec<_>> = (1..=20).map(order).collect();
    assert!(orders.len() > 1, "20 seeds gave one order");
    for found in &orders {
        let mut sorted = found.clone();
        sorted.sort();
        assert_eq!(sorted, addrs);
    }
    assert_eq!(order(42), order(42), "the order depends on the seed only");
}

#[test]
fn names_match_whatever_the_case_and_trailing_dot() {
    let dir = web();
    for name in ["WEB", "Web.", "web."] {
        let response = answered(ask(&dir, &bytes(&query(name, RecordType::A)), UDP));
        assert_eq!(a_records(&response), [ip("10.0.1.2")], "{name}");
        assert_eq!(response.answers[0].name.to_ascii(), format!("{}.", name.trim_end_matches('.')));
    }
    assert!(dir.asked.lock().unwrap().iter().all(|asked| asked == "web"));
}

#[test]
fn ptr_answers_the_directory_name_and_forwards_unknown_addresses() {
    let dir = FakeDirectory::default().reverse(ip("10.0.1.5"), "web.1.abcd", 9);
    let response = answered(ask(&dir, &bytes(&query("5.1.0.10.in-addr.arpa.", RecordType::PTR)), UDP));
    assert_eq!(response.answers.len(), 1);
    assert_eq!(response.answers[0].ttl, 9);
    let RData::PTR(target) = &response.answers[0].data else { panic!("{:?}", response.answers) };
    assert_eq!(target.0.to_ascii(), "web.1.abcd.");

    let unknown = bytes(&query("6.1.0.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(ask(&dir, &unknown, UDP), Outcome::Forward(QueryKind::Ptr));
}

#[test]
fn srv_answers_targets_with_their_addresses_as_additional_records() {
    let target = |name: &str, addr| SrvTarget { target: name.into(), port: 80, addr: ip(addr), ttl: 11 };
    let targets = vec![target("web.1.abcd", "10.0.1.5"), target("web.2.efgh", "10.0.1.6")];
    let dir = FakeDirectory::default().srv("web", "http", Proto::Tcp, targets);

    let response = answered(ask(&dir, &bytes(&query("_http._tcp.web", RecordType::SRV)), UDP));
    let srv: Vec<_> = response
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::SRV(srv) => (srv.priority, srv.weight, srv.port, srv.target.to_ascii(), record.ttl),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(srv, [(0, 1, 80, "web.1.abcd.".into(), 11), (0, 1, 80, "web.2.efgh.".into(), 11)]);
    let additional: Vec<_> = response
        .additionals
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => (record.name.to_ascii(), a.0),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(additional, [("web.1.abcd.".into(), ip("10.0.1.5")), ("web.2.efgh.".into(), ip("10.0.1.6"))]);

    let unknown = bytes(&query("_https._tcp.web", RecordType::SRV));
    assert_eq!(ask(&dir, &unknown, UDP), Outcome::Forward(QueryKind::Srv));
}

#[test]
fn any_answers_the_addresses_and_other_types_of_known_names_are_empty() {
    let dir = web();
    assert_eq!(
        a_records(&answered(ask(&dir, &bytes(&query("web", RecordType::ANY)), UDP))),
        [ip("10.0.1.2")]
    );
    let mx = answered(ask(&dir, &bytes(&query("web", RecordType::MX)), UDP));
    assert_eq!((mx.metadata.response_code, mx.answers.len()), (ResponseCode::NoError, 0));
}

#[test]
fn classes_other_than_in_are_forwarded() {
    let mut chaos = query("web", RecordType::A);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(ask(&web(), &bytes(&chaos), UDP), Outcome::Forward(QueryKind::A));
}

#[test]
fn garbage_after_a_header_gets_formerr_with_its_id() {
    let mut garbage = vec![0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xFF; 9]);
    let outcome = ask(&web(), &garbage, UDP);
    let Outcome::Answer(answer) = &outcome else { panic!("{outcome:?}") };
    assert_eq!((answer.rcode, answer.kind), (Rcode::FormErr, None));
    let response = answered(outcome);
    assert_eq!(response.metadata.id, 0xABCD);
    assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    assert!(response.metadata.recursion_desired);
}

#[test]
fn zero_or_several_questions_get_formerr() {
    let mut two = query("web", RecordType::A);
    two.add_query(query("db", RecordType::A).queries[0].clone());
    let mut none = query("web", RecordType::A);
    none.queries.clear();
    for message in [two, none] {
        let response = answered(ask(&web(), &bytes(&message), UDP));
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
    }
}

#[test]
fn other_opcodes_get_notimp() {
    let mut notify = query("web", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    let response = answered(ask(&web(), &bytes(&notify), UDP));
    assert_eq!(
        (response.metadata.response_code, response.metadata.op_code),
        (ResponseCode::NotImp, OpCode::Notify)
    );
}

#[test]
fn messages_without_a_header_are_dropped() {
    assert_eq!(ask(&web(), &[], UDP), Outcome::Drop(DropReason::TooShort));
    assert_eq!(ask(&web(), &[0x12, 0x34, 0x01, 0x00, 0x00], UDP), Outcome::Drop(DropReason::TooShort));
    assert_eq!(ask(&web(), &vec![0; 70_000], Transport::Tcp), Outcome::Drop(DropReason::TooLong));
}

#[test]
fn responses_are_dropped_not_answered() {
    let mut response = query("web", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(ask(&web(), &bytes(&response), UDP), Outcome::Drop(DropReason::Response));
}

#[test]
fn a_udp_query_over_512_bytes_is_formerr_unless_it_has_edns() {
    let padding = TXT::new(vec!["p".repeat(250), "q".repeat(250)]);
    let mut message = query("web", RecordType::A);
    message.add_additional(Record::from_rdata(Name::from_ascii("pad.").unwrap(), 0, RData::TXT(padding)));
    let plain = bytes(&message);
    assert!(plain.len() > 512);
    assert_eq!(answered(ask(&web(), &plain, UDP)).metadata.response_code, ResponseCode::FormErr);

    let edns = bytes(&with_edns(message, 1232));
    assert_eq!(a_records(&answered(ask(&web(), &edns, UDP))), [ip("10.0.1.2")]);
    assert_eq!(a_records(&answered(ask(&web(), &plain, Transport::Tcp))), [ip("10.0.1.2")]);
}

#[test]
fn a_large_udp_answer_is_truncated_to_the_client_limit_and_whole_over_tcp() {
    let addrs: Vec<_> = (0..100).map(|i| ip(&format!("10.0.{}.{}", i / 250, i % 250 + 2))).collect();
    let dir = FakeDirectory::default().name("tasks.web", &addrs, 5);
    let plain = bytes(&query("tasks.web", RecordType::A));

    let Outcome::Answer(answer) = ask(&dir, &plain, UDP) else { panic!() };
    assert!(answer.truncated && answer.message.len() <= 512, "{} bytes", answer.message.len());
    let response = answered(Outcome::Answer(answer));
    assert!(response.metadata.truncation);
    assert!(!response.answers.is_empty() && response.answers.len() < 100);

    let edns = bytes(&with_edns(query("tasks.web", RecordType::A), 4096));
    let Outcome::Answer(answer) = ask(&dir, &edns, UDP) else { panic!() };
    assert!(answer.truncated && answer.message.len() <= usize::from(DEFAULT_MAX_UDP_PAYLOAD));
    assert!(answered(Outcome::Answer(answer)).edns.is_some(), "the OPT record survives truncation");

    let whole = answered(ask(&dir, &plain, Transport::Tcp));
    assert!(!whole.metadata.truncation);
    assert_eq!(whole.answers.len(), 100);
}

#[test]
fn srv_additional_records_that_do_not_fit_are_left_out_without_tc() {
    // Single-label targets of 29 bytes cannot be compressed: 20 SRV records
    // take about 1000 bytes, leaving room for some of the A records only.
    let targets: Vec<_> = (0..20)
        .map(|i| SrvTarget {
            target: format!("t{i:02}{}", "x".repeat(26)),
            port: 80,
            addr: ip("10.0.1.5"),
            ttl: 5,
        })
        .collect();
    let dir = FakeDirectory::default().srv("web", "80", Proto::Tcp, targets);
    let srv_query = with_edns(query("_80._tcp.web", RecordType::SRV), 4096);
    let response = answered(ask(&dir, &bytes(&srv_query), UDP));
    assert!(!response.metadata.truncation);
    assert_eq!(response.answers.len(), 20);
    assert!(response.additionals.len() < 20);
}

#[test]
fn edns_is_answered_with_an_opt_record_and_unknown_versions_get_badvers() {
    let response = answered(ask(&web(), &bytes(&with_edns(query("web", RecordType::A), 4096)), UDP));
    let edns = response.edns.expect("an OPT record");
    assert_eq!((edns.max_payload(), edns.version()), (DEFAULT_MAX_UDP_PAYLOAD, 0));

    let mut future = with_edns(query("web", RecordType::A), 4096);
    future.edns.as_mut().unwrap().set_version(1);
    let outcome = ask(&web(), &bytes(&future), UDP);
    let Outcome::Answer(answer) = &outcome else { panic!("{outcome:?}") };
    assert_eq!(answer.rcode, Rcode::BadVers);
    // BADVERS shares code 16 with BADSIG; hickory reads it back as the latter.
    assert_eq!(u16::from(answered(outcome).metadata.response_code), 16);
}

/// A well-formed query: `TaSkS.wEb` (200 addresses in the test's directory)
/// or random labels of any bytes, a common or random type and class, and
/// maybe an OPT record with a random payload size and version.
fn arbitrary_query() -> impl Strategy<Value = Message> {
    let label = proptest::collection::vec(any::<u8>(), 1..20);
    let labels =
        prop_oneof![Just(vec![b"TaSkS".to_vec(), b"wEb".to_vec()]), proptest::collection::vec(label, 0..5),];
    let rtype = prop_oneof![Just(1u16), Just(28), Just(255), any::<u16>()];
    let edns = proptest::option::of((any::<u16>(), 0u8..2));
    (labels, rtype, prop_oneof![Just(1u16), any::<u16>()], edns).prop_map(|(labels, rtype, class, edns)| {
        let name = Name::from_labels(labels).unwrap_or_else(|_| Name::root());
        let mut message = query("web", RecordType::A);
        message.queries[0] = hickory_proto::op::Query::query(name, RecordType::from(rtype));
        message.queries[0].set_query_class(DNSClass::from(class));
        if let Some((payload, version)) = edns {
            message = with_edns(message, payload);
            message.edns.as_mut().unwrap().set_version(version);
        }
        message
    })
}

proptest! {
    #[test]
    fn well_formed_queries_are_answered_or_forwarded_within_the_limit(message in arbitrary_query()) {
        let dir = FakeDirectory::default().name("tasks.web", &vec![ip("10.0.1.2"); 200], 5);
        let Ok(query) = message.to_vec() else { return Ok(()) };
        let outcome = ask(&dir, &query, UDP);
        match &outcome {
            Outcome::Answer(answer) => {
                let limit = message.edns.as_ref().map_or(512, |e| e.max_payload().clamp(512, DEFAULT_MAX_UDP_PAYLOAD));
                prop_assert!(answer.message.len() <= usize::from(limit), "{} > {limit}", answer.message.len());
                prop_assert_eq!(&answer.message[..2], &query[..2]);
            }
            Outcome::Forward(_) => {}
            Outcome::Drop(reason) => prop_assert!(false, "dropped: {:?}", reason),
        }
    }

    #[test]
    fn respond_never_panics_on_random_bytes(query in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = ask(&web(), &query, UDP);
        let _ = ask(&web(), &query, Transport::Tcp);
    }

    #[test]
    fn respond_never_panics_on_a_query_header_with_random_body(
        body in proptest::collection::vec(any::<u8>(), 0..300),
        counts in any::<[u8; 8]>(),
    ) {
        let mut query = vec![0x12, 0x34, 0x01, 0x00];
        query.extend_from_slice(&counts);
        query.extend_from_slice(&body);
        let outcome = ask(&web(), &query, UDP);
        prop_assert!(matches!(outcome, Outcome::Answer(_) | Outcome::Forward(_)), "{:?}", outcome);
    }
}
