//! A directory made of hash maps, and helpers to build queries and read answers.
#![allow(dead_code)] // each test target uses a different part

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use shoal_dns::{Addresses, Directory, NetworkId, Outcome, Proto, Scope, SrvTarget};

/// The network the fixtures' names live on.
pub const NET: NetworkId = 4097;
/// The id every built query carries.
pub const ID: u16 = 0x1234;

/// Names, reverse names and SRV targets per network; records every name it is
/// asked so that tests can see the spelling the resolver uses.
#[derive(Debug, Default)]
pub struct FakeDirectory {
    names: HashMap<(NetworkId, String), Addresses>,
    reverse: HashMap<(NetworkId, Ipv4Addr), (String, u32)>,
    srv: HashMap<(NetworkId, String, String, Proto), Vec<SrvTarget>>,
    pub asked: Mutex<Vec<String>>,
}

impl FakeDirectory {
    pub fn name(mut self, name: &str, addrs: &[Ipv4Addr], ttl: u32) -> Self {
        self.names.insert((NET, name.to_owned()), Addresses { addrs: addrs.to_vec(), ttl });
        self
    }

    pub fn name_on(mut self, net: NetworkId, name: &str, addrs: &[Ipv4Addr], ttl: u32) -> Self {
        self.names.insert((net, name.to_owned()), Addresses { addrs: addrs.to_vec(), ttl });
        self
    }

    pub fn reverse(mut self, addr: Ipv4Addr, name: &str, ttl: u32) -> Self {
        self.reverse.insert((NET, addr), (name.to_owned(), ttl));
        self
    }

    pub fn srv(mut self, service: &str, port: &str, proto: Proto, targets: Vec<SrvTarget>) -> Self {
        self.srv.insert((NET, service.to_owned(), port.to_owned(), proto), targets);
        self
    }
}

impl Directory for FakeDirectory {
    fn lookup(&self, scope: &Scope, name: &str) -> Option<Addresses> {
        self.asked.lock().unwrap().push(name.to_owned());
        scope.networks.iter().find_map(|&net| self.names.get(&(net, name.to_owned())).cloned())
    }

    fn reverse(&self, scope: &Scope, addr: Ipv4Addr) -> Option<(String, u32)> {
        scope.networks.iter().find_map(|&net| self.reverse.get(&(net, addr)).cloned())
    }

    fn srv(&self, scope: &Scope, service: &str, port: &str, proto: Proto) -> Option<Vec<SrvTarget>> {
        let key = |net| (net, service.to_owned(), port.to_owned(), proto);
        scope.networks.iter().find_map(|&net| self.srv.get(&key(net)).cloned())
    }
}

/// The scope of a sandbox on [`NET`].
pub fn scope() -> Scope {
    Scope { networks: vec![NET] }
}

pub fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

/// A recursive query for `name` and `record_type` with id [`ID`].
pub fn query(name: &str, record_type: RecordType) -> Message {
    let mut message = Message::new(ID, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message
}

/// The same query with an OPT record advertising `payload`.
pub fn with_edns(mut message: Message, payload: u16) -> Message {
    let mut edns = Edns::new();
    edns.set_max_payload(payload);
    message.set_edns(edns);
    message
}

pub fn bytes(message: &Message) -> Vec<u8> {
    message.to_vec().unwrap()
}

/// The answer of an outcome, parsed; panics on any other outcome.
pub fn answered(outcome: Outcome) -> Message {
    match outcome {
        Outcome::Answer(answer) => Message::from_vec(&answer.message).unwrap(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// The IPv4 addresses of a message's answer section, in order.
pub fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            hickory_proto::rr::RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
