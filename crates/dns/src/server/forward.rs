//! Forwarding unknown names upstream, bounded in number and in time.
//!
//! A forward sends the client's query under a fresh random id from a fresh
//! socket (so a random source port), over the client's transport, to each
//! upstream in turn; it relays the first reply whose id and question match,
//! under the client's id. When the upstreams fail or the time runs out the
//! client gets SERVFAIL, so a forward always ends within `upstream_timeout`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, trace};

use super::Shared;
use crate::message;
use crate::stats::ForwardEvent;
use crate::{DropReason, Rcode};

/// Largest upstream UDP reply relayed. A client may advertise more, but a
/// reply that large is rare; it is answered with TC so the client retries over
/// TCP, instead of holding 64 KiB per forward in flight.
const UDP_REPLY_LEN: usize = 4096;

/// The client's transport, which the forward keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Udp,
    Tcp,
}

/// Whether a forward may start.
pub(super) enum Admission {
    /// Go ahead; the permit is the forward's place in the bound.
    Go(OwnedSemaphorePermit),
    /// Answer this now (SERVFAIL: no upstreams, or the bound is full).
    Refuse(Vec<u8>),
}

/// Why one upstream gave no relayable reply.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    /// Socket, connect, send or receive failed (ICMP unreachable included).
    #[error("upstream io: {0}")]
    Io(#[from] io::Error),
    /// A TCP reply for another query.
    #[error("upstream reply does not match the query")]
    Mismatch,
    /// A UDP reply larger than [`UDP_REPLY_LEN`].
    #[error("upstream reply larger than {UDP_REPLY_LEN} bytes")]
    TooLarge,
}

/// Why a forward ended without a reply to relay.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// The time ran out before any upstream answered.
    #[error("no upstream answered within {0:?}")]
    TimedOut(Duration),
    /// Every upstream failed before the time ran out.
    #[error("every upstream failed, last: {0}")]
    Failed(AttemptError),
    /// The reply was too large for UDP: the client should ask over TCP.
    #[error("upstream reply too large for UDP")]
    TooLarge,
}

impl Shared {
    /// Takes a place in the forwarding bound, or says what to answer instead.
    /// Counted either way.
    pub(super) fn admit(&self, query: &[u8]) -> Admission {
        let event = if self.config.upstreams.is_empty() {
            ForwardEvent::Failed
        } else {
            match self.forwards.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.counters.forward(ForwardEvent::Sent);
                    return Admission::Go(permit);
                }
                Err(_) => ForwardEvent::Refused,
            }
        };
        trace!(?event, "not forwarding");
        self.counters.forward(event);
        Admission::Refuse(self.servfail(query))
    }

    /// Forwards `query` and returns what goes back to the client: the
    /// upstream's reply under the client's id, SERVFAIL, or (UDP) an empty
    /// truncated answer when the reply was too large. Counts the outcome.
    pub(super) async fn forward(&self, query: &[u8], via: Via) -> Vec<u8> {
        let client_id = query.get(0..2).map_or(0, |id| u16::from_be_bytes([id[0], id[1]]));
        let mut upstream_query = query.to_vec();
        message::set_id(&mut upstream_query, self.entropy.next_id());

        match self.ask_upstreams(&upstream_query, via).await {
            Ok(mut reply) => {
                message::set_id(&mut reply, client_id);
                reply
            }
            Err(ForwardError::TooLarge) => {
                message::reply_without_records(query, Rcode::NoError, true, self.tuning.max_udp_payload)
                    .unwrap_or_else(|| self.servfail(query))
            }
            Err(error) => {
                debug!(%error, "forward failed");
                let event = match error {
                    ForwardError::TimedOut(_) => ForwardEvent::TimedOut,
                    _ => ForwardEvent::Failed,
                };
                self.counters.forward(event);
                self.servfail(query)
            }
        }
    }

    fn servfail(&self, query: &[u8]) -> Vec<u8> {
        // `respond` accepted the query, so it has a header: this is never empty.
        message::reply_without_records(query, Rcode::ServFail, false, self.tuning.max_udp_payload)
            .unwrap_or_default()
    }

    /// Tries each upstream in order, each with an equal share of the time
    /// left, so that a silent first upstream leaves time for the others.
    async fn ask_upstreams(&self, query: &[u8], via: Via) -> Result<Vec<u8>, ForwardError> {
        let timeout = self.config.upstream_timeout;
        let deadline = Instant::now() + timeout;
        let upstreams = &self.config.upstreams;
        let mut last_error = None;
        for (tried, &upstream) in upstreams.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let share = left / u32::try_from(upstreams.len() - tried).unwrap_or(1);
            let attempt = async {
                match via {
                    Via::Udp => self.over_udp(upstream, query).await,
                    Via::Tcp => self.over_tcp(upstream, query).await,
                }
            };
            match tokio::time::timeout(share, attempt).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(AttemptError::TooLarge)) => return Err(ForwardError::TooLarge),
                Ok(Err(error)) => {
                    debug!(%upstream, %error, "upstream failed");
                    last_error = Some(error);
                }
                Err(_) => {
                    debug!(%upstream, ?share, "upstream did not answer in time");
                    last_error = None;
                }
            }
        }
        match last_error {
            Some(error) => Err(ForwardError::Failed(error)),
            None => Err(ForwardError::TimedOut(timeout)),
        }
    }

    async fn over_udp(&self, upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, AttemptError> {
        let socket = UdpSocket::bind(unspecified_for(upstream)).await?;
        // Connected: the kernel drops datagrams from anyone but the upstream
        // and reports its ICMP errors, so a dead upstream fails fast.
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buffer = vec![0u8; UDP_REPLY_LEN + 1];
        loop {
            let len = socket.recv(&mut buffer).await?;
            if len > UDP_REPLY_LEN {
                return Err(AttemptError::TooLarge);
            }
            let reply = &buffer[..len];
            if message::is_reply_to(query, reply) {
                return Ok(reply.to_vec());
            }
            self.counters.drop(DropReason::UpstreamMismatch);
        }
    }

    async fn over_tcp(&self, upstream: SocketAddr, query: &[u8]) -> Result<Vec<u8>, AttemptError> {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(|_| AttemptError::TooLarge)?;
        let mut frame = Vec::with_capacity(2 + query.len());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(query);
        stream.write_all(&frame).await?;
        let len = stream.read_u16().await?;
        let mut reply = vec![0u8; usize::from(len)];
        stream.read_exact(&mut reply).await?;
        if message::is_reply_to(query, &reply) {
            Ok(reply)
        } else {
            self.counters.drop(DropReason::UpstreamMismatch);
            Err(AttemptError::Mismatch)
        }
    }
}

/// The wildcard address of the upstream's family, any port.
fn unspecified_for(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}
