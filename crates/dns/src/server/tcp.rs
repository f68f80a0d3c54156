//! One sandbox's TCP side: an accept loop holding at most
//! `max_tcp_connections` connections, each reading length-prefixed queries
//! one after another until the client closes or idles out.
//!
//! A connection answers its messages in order: a forwarded query delays the
//! next message on the same connection (by at most the upstream timeout), not
//! other connections or the UDP loop. Stub resolvers send one or two queries
//! per connection, so pipelining is not worth its buffers.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;
use tracing::{Instrument, debug, debug_span, trace};

use super::forward::{Admission, Via};
use super::{Shared, Step};
use crate::{DropReason, Rng, Scope, Transport, respond};

/// Pause after a failed accept (out of file descriptors, typically), so a
/// persistent failure does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) async fn run(shared: Arc<Shared>, scope: Arc<Scope>, listener: TcpListener, mut rng: Rng) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= shared.config.max_tcp_connections {
                        trace!(%peer, "too many tcp connections, closing");
                        shared.counters.drop(DropReason::TcpConnectionLimit);
                        drop(stream);
                        continue;
                    }
                    let connection = serve_connection(shared.clone(), scope.clone(), stream, Rng::new(rng.next_u64()));
                    connections.spawn(connection.instrument(debug_span!("tcp", %peer)));
                }
                Err(error) => {
                    debug!(%error, "tcp accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reap closed connections so the set counts only open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, scope: Arc<Scope>, mut stream: TcpStream, mut rng: Rng) {
    let idle = shared.tuning.tcp_idle_timeout;
    let mut query = Vec::new();
    let mut frame = Vec::new();
    loop {
        match timeout(idle, read_message(&mut stream, &mut query)).await {
            Ok(Read::Message) => {}
            Ok(Read::Closed) => return,
            Ok(Read::Cut) => {
                shared.counters.drop(DropReason::TcpCut);
                return;
            }
            Err(_) => {
                shared.counters.drop(DropReason::TcpTimeout);
                return;
            }
        }
        let outcome = respond(&*shared.directory, &scope, &query, Transport::Tcp, &mut rng);
        let answer = match shared.account(outcome) {
            Step::Send(answer) => answer,
            Step::Nothing => continue,
            Step::Forward => {
                let answer = match shared.admit(&query) {
                    Admission::Refuse(answer) => answer,
                    Admission::Go(permit) => {
                        let answer = shared.forward(&query, Via::Tcp).await;
                        drop(permit);
                        answer
                    }
                };
                shared.count_relayed(&answer);
                answer
            }
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            shared.counters.drop(DropReason::SendFailed);
            continue;
        };
        frame.clear();
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&answer);
        match timeout(idle, stream.write_all(&frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(%error, "tcp write failed");
                shared.counters.drop(DropReason::SendFailed);
                return;
            }
            Err(_) => {
                shared.counters.drop(DropReason::TcpTimeout);
                return;
            }
        }
    }
}

/// How reading a message ended.
enum Read {
    /// A whole message is in the buffer.
    Message,
    /// The client closed (or reset) the connection between messages.
    Closed,
    /// The connection ended inside a message.
    Cut,
}

/// Reads one length-prefixed message into `buffer` (reused: it grows to the
/// largest message seen on this connection, at most 64 KiB).
async fn read_message(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Read {
    let mut prefix = [0u8; 2];
    match stream.read(&mut prefix[..1]).await {
        Ok(0) | Err(_) => return Read::Closed,
        Ok(_) => {}
    }
    if stream.read_exact(&mut prefix[1..]).await.is_err() {
        return Read::Cut;
    }
    buffer.resize(usize::from(u16::from_be_bytes(prefix)), 0);
    match stream.read_exact(buffer).await {
        Ok(_) => Read::Message,
        Err(_) => Read::Cut,
    }
}
