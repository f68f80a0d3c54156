//! The gossip frame decoders: raw bytes against sealing, and authenticated
//! bytes (sealed here with the node's own key) against the SWIM, delta and
//! anti-entropy decoders behind it.
#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use shoal_gossip::seal::{self, Sender};
use shoal_gossip::{GossipConfig, GossipNode, KeyRing, Member, NodeId};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let ring = KeyRing::new(1, [5; 32]);
    let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7946);
    let me = Member { id: NodeId(1), addr, epoch: 1, incarnation: 0 };
    let mut node = GossipNode::new(me, GossipConfig::default(), ring.clone(), 1, now);
    let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 7946);
    node.handle_datagram(now, peer, data);
    let _ = node.handle_frame(now, data);
    let sealed = seal::seal(&ring, Sender { id: NodeId(2), epoch: 1, counter: 1 }, [0; 24], data);
    node.handle_datagram(now, peer, &sealed);
    let sealed = seal::seal(&ring, Sender { id: NodeId(2), epoch: 1, counter: 2 }, [1; 24], data);
    let _ = node.handle_frame(now, &sealed);
    while node.poll_transmit().is_some() {}
});
