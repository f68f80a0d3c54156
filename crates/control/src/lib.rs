//! The cluster control plane's parts below the agent: the cluster CA and
//! node certificates, join tokens, IPAM, the durable store of cluster
//! state, QUIC transport, and the versioned 2377 protocol.
//!
//! Invariants: a node's identity (id and role) is whatever the CA signed
//! into its certificate, never what it claims; a join token names the CA by
//! digest, so a joiner refuses a manager presenting any other CA; the store
//! is the only place cluster state lives, and survives restarts.

#![forbid(unsafe_code)]

pub mod ca;
pub mod ipam;
pub mod protocol;
pub mod store;
pub mod token;
pub mod transport;

pub use ca::{CaError, ClusterCa, Role, Subject};
pub use ipam::{Ipam, IpamError, NetworkAlloc};
pub use protocol::{GossipKeys, LogLine, NodeInfo, ProtocolError, Report, Request, Response};
pub use store::{Availability, ClusterState, NetworkRecord, NodeRecord, NodeState, Store, StoreError};
pub use token::{JoinToken, TokenError};
