//! Every docker-shaped object the API serves, made here and only here: the
//! node, network, service, task and volume objects of docker's Engine API (field
//! names, nesting, durations in nanoseconds, times in RFC 3339), typed in
//! both directions so the CLI reads them as types and a service spec comes
//! back in the shape it went out. Shoal's additions (`Self`, a task's
//! `Name` and `Status.Health`) are extra fields, never changed meanings.
//!
//! Invariant: a service spec survives the round trip orchestrator ->
//! docker shape -> orchestrator unchanged (a `service scale` must not roll
//! every task because a field moved).

mod cluster;
mod service;
mod spec;
mod volume;

pub use cluster::*;
pub use service::*;
pub use spec::*;
pub use volume::*;

use serde::{Deserialize, Serialize};

const NS_PER_MS: u64 = 1_000_000;

fn ns(ms: u64) -> u64 {
    ms.saturating_mul(NS_PER_MS)
}

fn ms(ns: u64) -> u64 {
    ns / NS_PER_MS
}

/// An object's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Bumped on every change.
    #[serde(rename = "Index")]
    pub index: u64,
}

#[cfg(test)]
mod tests;
