//! Where tasks live: named network namespaces, and sandboxes made of one
//! namespace plus the TUN interfaces that attach it to overlay networks.
//!
//! Invariants: nothing here touches the namespace the caller's thread is in;
//! every switch of namespace happens on a short-lived thread of its own, so
//! the caller's threads and tokio's workers never change namespace. All
//! `unsafe` of the project's namespace and interface plumbing lives in
//! [`sys`].

pub mod netns;
pub mod sandbox;
mod sys;

pub use netns::{NetNs, NetnsError};
pub use sandbox::{InterfaceSpec, Sandbox, SandboxError};
