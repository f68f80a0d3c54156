//! Dispatch: each node's task runner gets its assignments and hands back
//! its reports. On the manager's own node the runner is fed directly
//! ([`feed_local`]); a worker's session long-polls `Assignments` and pushes
//! `Report`s over QUIC ([`exchange`]), and the manager answers the long
//! poll when the node's tasks change ([`assignments_after`]).
//!
//! Invariant: a report leaves a worker's outbox only once the manager has
//! taken it; reports not taken wait for the next session.

use std::sync::{Arc, Weak};
use std::time::Duration;

use shoal_control::transport;
use shoal_control::{Report, Request, Response};
use shoal_orch::Assignments;
use tokio::sync::{Mutex, mpsc, watch};

use super::orchestration::Orchestration;

/// How long the manager holds a long poll.
pub const LONG_POLL: Duration = Duration::from_secs(5);

/// Reports sent at most in one request.
const REPORT_BATCH: usize = 512;

/// What `node` runs once it differs from the digest `known`,
/// or after `limit` (a long poll).
pub async fn assignments_after(
    orch: &Orchestration,
    node: &str,
    known: u64,
    limit: Duration,
) -> (u64, Assignments) {
    // Subscribe before looking, so a change in between is not missed.
    let mut changes = orch.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (digest, assigned) = orch.assignments(node);
        if digest != known {
            return (digest, assigned);
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return (digest, assigned),
        }
    }
}

/// Feeds the manager's own task runner: its assignments in, its reports
/// out, until the orchestration or the runner is gone.
pub async fn feed_local(
    orch: Weak<Orchestration>,
    node: String,
    assignments: watch::Sender<Assignments>,
    mut reports: mpsc::UnboundedReceiver<Report>,
) {
    let mut changes = match orch.upgrade() {
        Some(o) => o.subscribe(),
        None => return,
    };
    let mut last = None;
    loop {
        let Some(o) = orch.upgrade() else { return };
        let (digest, assigned) = o.assignments(&node);
        if last != Some(digest) {
            last = Some(digest);
            if assignments.send(assigned).is_err() {
                return;
            }
        }
        drop(o);
        tokio::select! {
            _ = changes.changed() => {}
            report = reports.recv() => {
                let Some(report) = report else { return };
                let mut batch = vec![report];
                while let Ok(r) = reports.try_recv() {
                    batch.push(r);
                }
                if let Some(o) = orch.upgrade() {
                    o.apply_reports(&node, batch);
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A worker's reports not yet taken by the manager.
#[derive(Debug)]
pub struct Outbox {
    /// From the task runner.
    rx: mpsc::UnboundedReceiver<Report>,
    /// Sent but not acknowledged.
    pending: Vec<Report>,
}

impl Outbox {
    /// Reports from `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<Report>) -> Outbox {
        Outbox { rx, pending: Vec::new() }
    }
}

/// Keeps a worker's task runner fed over its session: long-polls
/// assignments and pushes reports, until the connection fails.
pub async fn exchange(
    conn: quinn::Connection,
    assignments: Arc<watch::Sender<Assignments>>,
    outbox: Arc<Mutex<Outbox>>,
) {
    let poll = async {
        let mut known = 0u64;
        loop {
            match transport::call::<_, Response>(&conn, &Request::Assignments { known }).await {
                Ok(Response::Assignments { digest, tasks, mesh }) => {
                    if digest != known {
                        known = digest;
                        if assignments.send(Assignments { tasks, mesh }).is_err() {
                            return;
                        }
                    }
                }
                Ok(Response::Error { message }) => {
                    tracing::warn!(%message, "the manager refused to dispatch");
                    return;
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "assignments poll failed");
                    return;
                }
            }
        }
    };
    let push = async {
        let mut outbox = outbox.lock().await;
        loop {
            if outbox.pending.is_empty() {
                let Some(report) = outbox.rx.recv().await else { return };
                outbox.pending.push(report);
            }
            while outbox.pending.len() < REPORT_BATCH
                && let Ok(r) = outbox.rx.try_recv()
            {
                outbox.pending.push(r);
            }
            let request = Request::Report { reports: outbox.pending.clone() };
            if !matches!(transport::call::<_, Response>(&conn, &request).await, Ok(Response::Ok { .. })) {
                return; // kept in the outbox for the next session
            }
            outbox.pending.clear();
        }
    };
    tokio::select! {
        () = poll => {}
        () = push => {}
    }
}
