//! One sandbox's UDP loop: one socket, one reused receive buffer, directory
//! answers sent inline, forwards spawned into a set the loop owns (so they
//! stop with it) and bounded by the node-wide forward permits.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tracing::{debug, trace};

use super::forward::{Admission, Via};
use super::{Shared, Step};
use crate::{DropReason, Rng, Scope, Transport, respond};

/// Largest query datagram accepted. Stub resolvers send a few dozen bytes;
/// one byte more is received so that a longer datagram, cut by the kernel, is
/// recognised and dropped instead of being answered as something else.
const UDP_QUERY_LEN: usize = 4096;

pub(super) async fn run(shared: Arc<Shared>, scope: Arc<Scope>, socket: Arc<UdpSocket>, mut rng: Rng) {
    let mut buffer = vec![0u8; UDP_QUERY_LEN + 1];
    let mut forwards = JoinSet::new();
    let transport = Transport::Udp { max_payload: shared.tuning.max_udp_payload };
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let (len, peer) = match received {
                    Ok(received) => received,
                    Err(error) => {
                        // A UDP socket reports ICMP errors of earlier sends here;
                        // nothing to do but read on.
                        trace!(%error, "udp receive failed");
                        continue;
                    }
                };
                if len > UDP_QUERY_LEN {
                    shared.counters.drop(DropReason::TooLong);
                    continue;
                }
                let query = &buffer[..len];
                match shared.account(respond(&*shared.directory, &scope, query, transport, &mut rng)) {
                    Step::Send(answer) => send(&shared, &socket, &answer, peer).await,
                    Step::Nothing => {}
                    Step::Forward => match shared.admit(query) {
                        Admission::Refuse(answer) => {
                            shared.count_relayed(&answer);
                            send(&shared, &socket, &answer, peer).await;
                        }
                        Admission::Go(permit) => {
                            let (shared, socket, query) = (shared.clone(), socket.clone(), query.to_vec());
                            forwards.spawn(async move {
                                let answer = shared.forward(&query, Via::Udp).await;
                                drop(permit);
                                shared.count_relayed(&answer);
                                send(&shared, &socket, &answer, peer).await;
                            });
                        }
                    },
                }
            }
            // Reap finished forwards so the set holds only those in flight.
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
}

async fn send(shared: &Shared, socket: &UdpSocket, message: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(message, peer).await {
        debug!(%error, %peer, "udp send failed");
        shared.counters.drop(DropReason::SendFailed);
    }
}
