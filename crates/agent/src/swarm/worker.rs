//! A worker's session with the manager: a mutual-TLS QUIC connection that
//! carries heartbeats, certificate renewal and dispatch, and comes back
//! when it drops.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_control::ca;
use shoal_control::transport::{self, SERVER_NAME};
use shoal_control::{Request, Response};
use shoal_orch::Assignments;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

use super::config;
use super::dispatch::{self, Outbox};
use crate::error::Error;

/// How long a connection attempt to the manager may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Wait before reading unreadable certificate files again.
const CERT_RETRY: Duration = Duration::from_secs(5);
/// Wait before reconnecting after a session ended.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Connects to the manager at `remote`.
pub async fn connect(config: quinn::ClientConfig, remote: SocketAddr) -> Result<quinn::Connection, Error> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
        .map_err(Error::io("open a control-plane socket"))?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(remote, SERVER_NAME).map_err(Error::internal)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains(transport::CA_MISMATCH) {
                Err(Error::Invalid(transport::CA_MISMATCH.into()))
            } else {
                Err(Error::Unavailable(format!("cannot reach the manager at {remote}: {text}")))
            }
        }
        Err(_) => Err(Error::Unavailable(format!(
            "timed out reaching the manager at {remote}: check the address and port 2377"
        ))),
    }
}

/// The client configuration from this node's certificate files, and when the
/// certificate should be renewed: at a random point between 50 % and 80 % of
/// its validity, as Swarm does.
fn session_client(dir: &Path) -> Result<(quinn::ClientConfig, SystemTime), Error> {
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map_err(Error::io(format!("read {}", dir.join(name).display())))
    };
    let (cert, key, ca_pem) = (read("node.crt")?, read("node.key")?, read("ca.crt")?);
    let ca_der = ca::pem_to_der(&ca_pem).ok_or_else(|| Error::Internal("ca.crt is not PEM".into()))?;
    let (issued, end) = config::certificate_life(dir)?;
    let life = end.duration_since(issued).unwrap_or_default();
    let fraction = 0.5 + 0.3 * f64::from(ca::random::<1>().map_or(128, |b| b[0])) / 255.0;
    let client = transport::client_config(&ca_der, &cert, &key).map_err(Error::internal)?;
    Ok((client, issued + life.mul_f64(fraction)))
}

/// Keeps a mutual-TLS session to the manager, heartbeats over it, renews
/// the node certificate when due, feeds the task runner, and reconnects
/// when the session drops.
pub async fn session(
    dir: PathBuf,
    manager: SocketAddr,
    assignments: Arc<watch::Sender<Assignments>>,
    outbox: Arc<Mutex<Outbox>>,
    keys: Keys,
) {
    let mut keys = keys;
    loop {
        match session_client(&dir) {
            Ok((client, renew_at)) => match connect(client, manager).await {
                Ok(conn) => {
                    // In a JoinSet, which aborts it when dropped: the exchange
                    // ends with its session, also when the session itself is
                    // aborted (`swarm leave`), or it would go on feeding the
                    // old swarm's assignments to this node.
                    let mut exchange = JoinSet::new();
                    exchange.spawn(dispatch::exchange(conn.clone(), assignments.clone(), outbox.clone()));
                    // Either half ending ends the session: heartbeats alone
                    // would keep a node Ready that no longer hears its
                    // assignments (a poll that timed out while the daemon
                    // was frozen, say), and its old tasks would run on.
                    tokio::select! {
                        () = heartbeat_until_failure(&conn, &dir, renew_at, &mut keys) => {}
                        _ = exchange.join_next() => tracing::info!("assignments exchange ended; reconnecting"),
                    }
                    drop(exchange);
                    conn.close(0u32.into(), b"reconnecting");
                }
                Err(e) => tracing::warn!(error = %e, %manager, "cannot reach the manager"),
            },
            Err(e) => {
                tracing::error!(error = %e, "cannot load this node's certificate");
                tokio::time::sleep(CERT_RETRY).await;
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
    }
}

/// What the session knows of the swarm's gossip key ring.
#[derive(Debug)]
pub struct Keys {
    /// Where the node's gossip hears of a new ring.
    pub events: tokio::sync::mpsc::Sender<super::membership::RoleEvent>,
    /// The version this node gossips with.
    pub applied: u64,
}

/// Heartbeats over `conn` until it fails or the certificate is due for
/// renewal (renewed here; the caller reconnects with it). A new gossip key
/// ring in an answer (a rotation's step) is applied, then confirmed.
async fn heartbeat_until_failure(
    conn: &quinn::Connection,
    dir: &Path,
    renew_at: SystemTime,
    keys: &mut Keys,
) {
    loop {
        if crate::clock::now() >= renew_at {
            match renew(conn, dir).await {
                Ok(()) => tracing::info!("node certificate renewed"),
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed"),
            }
            return;
        }
        match transport::call::<_, Response>(conn, &Request::Heartbeat).await {
            Ok(Response::Ok { heartbeat_secs, gossip_keys }) => {
                if let Some(ring) = gossip_keys {
                    if ring.version > keys.applied {
                        match super::membership::apply_gossip_keys(&keys.events, dir, &ring).await {
                            Ok(()) => {
                                tracing::info!(version = ring.version, "gossip key ring changed");
                                keys.applied = ring.version;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot apply the swarm's new gossip keys"),
                        }
                    }
                    let ack = Request::KeysApplied { version: keys.applied };
                    if transport::call::<_, Response>(conn, &ack).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_secs(heartbeat_secs.max(1))).await;
            }
            Ok(Response::Error { message }) => {
                tracing::warn!(%message, "manager refused the heartbeat");
                return;
            }
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                return;
            }
        }
    }
}

async fn renew(conn: &quinn::Connection, dir: &Path) -> Result<(), Error> {
    let (csr, key) = ca::new_csr()?;
    match transport::call::<_, Response>(conn, &Request::Renew { csr }).await {
        Ok(Response::Renewed { cert }) => {
            config::replace_key_pair(dir, &cert, &key).map_err(Error::io("replace the node's key pair"))
        }
        Ok(Response::Error { message }) => Err(Error::Unavailable(message)),
        Ok(_) => Err(Error::Internal("unexpected answer to a renewal".into())),
        Err(e) => Err(Error::Unavailable(e.to_string())),
    }
}
