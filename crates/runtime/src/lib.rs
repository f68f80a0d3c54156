//! Where tasks live: named network namespaces, sandboxes made of one
//! namespace plus the TUN interfaces that attach it to overlay networks,
//! and the `exec` runtime that runs a task's process tree inside one.
//!
//! Invariants: nothing here touches the namespace the caller's thread is in;
//! every switch of namespace happens on a short-lived thread of its own, or
//! in the single-threaded helper processes of [`exec`], so the daemon's
//! threads and tokio's workers never change namespace. The `unsafe` of the
//! interface plumbing lives in `sys`; the only other `unsafe` is `fork` in
//! those single-threaded helpers.

pub mod cgroup;
pub mod exec;
pub mod netns;
pub mod process;
pub mod sandbox;
mod sys;

pub use sys::trim_heap;

pub use cgroup::{Cgroup, Limits};
pub use exec::{EnterSpec, ExecSpec};
pub use netns::{NetNs, NetnsError};
pub use sandbox::{InterfaceSpec, Sandbox, SandboxError, TunQueues, default_queues};
