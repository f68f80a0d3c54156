//! Shoal's overlay data plane.
//!
//! [`core`] decides, per packet, over endpoint tables: deliver to a local
//! endpoint, encapsulate towards another node, or drop and count why; packets
//! to a service VIP are load-balanced to a backend and connection-tracked, so
//! that replies come back from the VIP. It does no IO. [`driver`] moves packets between the TUN devices of local endpoints
//! and the node's VXLAN UDP sockets, in batches, and feeds them to the core.
//! [`offload`] cuts TSO super-packets into segment headers and joins
//! received segments, so that payload bytes are not copied in userspace.

#![forbid(unsafe_code)]

pub mod core;
pub mod driver;
pub mod offload;

pub use crate::core::{
    Backend, BackendFlows, BackendState, Conntrack, ConntrackCounters, CounterSnapshot, Counters, DropReason,
    Egress, EndpointId, Ingress, Location, Policy, SavedFlow, SourceNat, TableError, Tables, VipService,
};
pub use crate::driver::{AttachError, Dataplane, DataplaneConfig};
