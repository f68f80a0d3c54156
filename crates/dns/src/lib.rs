//! Shoal's service-name resolver: what every task reaches at 127.0.0.11:53.
//!
//! Names of the service directory (`web`, `stack_web`, aliases, `tasks.web`,
//! task names `web.1.<id>`, reverse names of VIPs and task addresses, and SRV
//! names `_<port>._tcp.web`) are answered from the [`Directory`] the agent
//! keeps over gossip, scoped to the networks of the asking sandbox; every
//! other name is forwarded to the node's upstream resolvers.
//!
//! Two layers:
//!
//! - [`respond`] is the core: bytes of one query in, an [`Outcome`] out
//!   (answer, forward, or drop). It does no IO, reads no clock and draws no
//!   global randomness: the directory, the [`Scope`] and the [`Rng`] that
//!   shuffles answers are arguments.
//! - [`Server`] is the tokio glue: per sandbox, one UDP loop and one TCP
//!   accept loop over sockets the agent bound inside the sandbox's namespace,
//!   and a forwarder bounded in concurrency and time.
//!
//! We parse and build messages with hickory-proto but do not use
//! hickory-server: our own small socket loops let us (a) know which sandbox
//! asked, since each sandbox gets its own loops and so its own scope, (b)
//! bound concurrency (TCP connections per sandbox, forwards per node), and
//! (c) count every malformed or dropped message by reason ([`Stats`]).
//!
//! Invariants:
//!
//! - **No panic on input.** Any bytes from a task or an upstream are parsed
//!   with checked reads; a proptest feeds [`respond`] random messages.
//! - **Bounded memory.** One receive buffer per UDP loop, at most
//!   [`Config::max_tcp_connections`] connections per sandbox with one message
//!   buffer each, at most [`Config::max_forwards`] forwards in flight per node;
//!   a flood is answered, refused or dropped, never queued.
//! - **Every drop counted.** Each message that gets no answer, and each
//!   refusal, is counted by reason in [`Stats`] before anything is sent.
//! - **Always an answer in time.** A query with a readable header gets a
//!   response: ours, the upstream's, or SERVFAIL within
//!   [`Config::upstream_timeout`].
//!
//! One departure from "hot paths allocate nothing": each answer is built as a
//! hickory `Message` with owned records, a handful of small allocations per
//! query. Name lookups come at a tiny fraction of packet rates, and a
//! well-tested codec is worth more here than a zero-copy one.
#![forbid(unsafe_code)]

mod directory;
mod fast;
mod message;
mod names;
mod outcome;
mod resolv_conf;
mod respond;
mod rng;
mod server;
mod stats;

pub use directory::{Addresses, Directory, NetworkId, Proto, Scope, SrvTarget};
pub use outcome::{Answer, DEFAULT_MAX_UDP_PAYLOAD, DropReason, Outcome, QueryKind, Rcode, Transport};
pub use resolv_conf::{MAX_UPSTREAMS, upstreams_from_resolv_conf};
pub use respond::respond;
pub use rng::Rng;
pub use server::{
    Config, DEFAULT_MAX_FORWARDS, DEFAULT_MAX_TCP_CONNECTIONS, DEFAULT_TCP_IDLE_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT, Server, Serving, Tuning,
};
pub use stats::Stats;
