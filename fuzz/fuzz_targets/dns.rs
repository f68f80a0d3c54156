//! The tasks' resolver's whole decision on arbitrary messages: never a
//! panic, and an answer only as long as the transport allows.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use shoal_dns::{Addresses, Directory, Outcome, Proto, Rng, Scope, SrvTarget, Transport};

/// A directory with one service, `web`, on network 1.
struct One;

impl Directory for One {
    fn lookup(&self, _: &Scope, name: &str) -> Option<Addresses> {
        (name == "web" || name == "tasks.web").then(|| Addresses {
            addrs: vec![Ipv4Addr::new(10, 0, 1, 2), Ipv4Addr::new(10, 0, 1, 3)],
            ttl: 5,
        })
    }
    fn reverse(&self, _: &Scope, addr: Ipv4Addr) -> Option<(String, u32)> {
        (addr == Ipv4Addr::new(10, 0, 1, 2)).then(|| ("web.1.abc".to_owned(), 5))
    }
    fn srv(&self, _: &Scope, service: &str, _: &str, _: Proto) -> Option<Vec<SrvTarget>> {
        (service == "web").then(|| {
            vec![SrvTarget { target: "web.1.abc".into(), port: 80, addr: Ipv4Addr::new(10, 0, 1, 2), ttl: 5 }]
        })
    }
}

fuzz_target!(|data: &[u8]| {
    let scope = Scope { networks: vec![1] };
    let mut rng = Rng::new(7);
    for transport in [Transport::Udp { max_payload: 512 }, Transport::Tcp] {
        if let Outcome::Answer(answer) = shoal_dns::respond(&One, &scope, data, transport, &mut rng) {
            if let Transport::Udp { max_payload } = transport {
                assert!(answer.message.len() <= usize::from(max_payload).max(512));
            }
        }
    }
});
