//! The orchestrator: services and their tasks, reconciled toward what the
//! user asked for, as pure state transitions.
//!
//! [`World`] holds every service and task. The manager calls
//! [`World::reconcile`] on a timer and after every change, with the nodes as
//! the scheduler sees them, the time, an address allocator and an id source;
//! it applies the reports agents send with [`World::report`]. Each
//! reconciliation, in order: frees the addresses of ended tasks; replaces
//! the tasks of down and drained nodes; applies the restart policy to tasks
//! that ended; makes the slots (replicated) or nodes (global) match the
//! service; rolls tasks whose spec is stale, batch by batch; places new
//! tasks with `shoal-sched`; and drops removed tasks and history beyond the
//! retention limit. Published ports are checked and given out by
//! [`World::publish`]; every node holds an address on the `ingress` network
//! for its routing mesh ([`World::mesh`]).
//!
//! Invariants: no IO, no clock, no randomness (time and ids come in); a
//! task's observed state only moves forward; a slot has at most one
//! runnable task except while a start-first update overlaps old and new;
//! every address allocated is released exactly once, when its task ends or
//! is dropped.

#![forbid(unsafe_code)]

mod model;
mod publish;
mod reconcile;

pub use model::*;
pub use reconcile::{Allocator, Env, TASK_HISTORY, World};

#[cfg(test)]
mod tests;
