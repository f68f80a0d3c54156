//! The 2377 protocol: what nodes and the manager say to each other.
//!
//! Each message travels in an envelope whose shape never changes: the
//! protocol [`VERSION`], the sender's build, and the body. A reader checks
//! the version before it decodes the body, so a worker and a manager of
//! builds that speak different versions fail with a message naming both
//! builds ([`ProtocolError::Version`]), never with a decode error. Bump
//! [`VERSION`] whenever a message below changes shape.

use std::net::SocketAddrV4;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_orch::{Task, TaskStatus};

use crate::ca::Role;

/// The version of the messages below.
pub const VERSION: u32 = 2;

/// This build, as peers are told it.
pub const BUILD: &str = env!("CARGO_PKG_VERSION");

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The peer speaks another version of the protocol.
    #[error(
        "control protocol mismatch: the peer runs shoal {peer_build} (protocol {peer}) and this node shoal {BUILD} (protocol {VERSION}): run the same Shoal version on every node"
    )]
    Version {
        /// The peer's protocol version (0: a build from before versions).
        peer: u32,
        /// The peer's build.
        peer_build: String,
    },
    /// The message is not an envelope, or its body does not decode.
    #[error("undecodable control message: {0}")]
    Decode(String),
}

#[derive(Serialize)]
struct Sealed<'a, T> {
    protocol: u32,
    build: &'a str,
    body: &'a T,
}

#[derive(Deserialize)]
struct Opened {
    #[serde(default)]
    protocol: u32,
    #[serde(default)]
    build: String,
    #[serde(default)]
    body: serde_json::Value,
}

/// Encodes `message` in an envelope of this version.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    serde_json::to_vec(&Sealed { protocol: VERSION, build: BUILD, body: message })
        .expect("control messages serialise")
}

/// Decodes an envelope: its version first, then its body.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let opened: Opened = serde_json::from_slice(bytes).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    if opened.protocol != VERSION {
        let peer_build = if opened.build.is_empty() { "(unknown)".to_owned() } else { opened.build };
        return Err(ProtocolError::Version { peer: opened.protocol, peer_build });
    }
    serde_json::from_value(opened.body).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// A node's description, sent with joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Hostname.
    pub hostname: String,
    /// Underlay address.
    pub addr: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// A line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was read, ms since the epoch.
    pub ts_ms: u64,
    /// Whether it came from stderr.
    pub stderr: bool,
    /// The line, without its newline.
    pub text: String,
}

/// What a node's task runner tells the manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Report {
    /// A task's new status.
    Status {
        /// Task id.
        task: String,
        /// Its status.
        status: TaskStatus,
    },
    /// Output of a task.
    Logs {
        /// Task id.
        task: String,
        /// Lines.
        lines: Vec<LogLine>,
    },
}

/// Requests to the manager.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Join with a token's secret and a CSR (no client certificate yet).
    Join {
        /// The join token's secret.
        secret: [u8; 16],
        /// The joiner's certificate signing request (PEM).
        csr: String,
        /// The joiner.
        info: NodeInfo,
    },
    /// I am alive (mutual TLS: the certificate says who).
    Heartbeat,
    /// This node gossips with the key ring of `version` now (the answer to
    /// a heartbeat's [`GossipKeys`]).
    KeysApplied {
        /// The ring's version.
        version: u64,
    },
    /// A new certificate for the same identity, over a new key.
    Renew {
        /// Certificate signing request for the new key (PEM).
        csr: String,
    },
    /// This node's tasks, once they differ from the digest `known` (a long
    /// poll of up to 5 s).
    Assignments {
        /// The digest of the tasks the node has.
        known: u64,
    },
    /// Task status and output from this node's task runner.
    Report {
        /// In the order they happened.
        reports: Vec<Report>,
    },
}

/// A version of the swarm's gossip key ring, as key-file text (`ID:HEX`
/// lines, the primary key first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipKeys {
    /// Bumped at every step of a rotation.
    pub version: u64,
    /// The ring.
    pub keys: String,
}

/// The manager's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A join succeeded: the node's identity and what it needs to take part.
    Joined {
        /// The node's id.
        node_id: String,
        /// Its role.
        role: Role,
        /// Its certificate (PEM).
        cert: String,
        /// The cluster CA (PEM).
        ca: String,
        /// Cluster id.
        cluster_id: String,
        /// The gossip key ring, as key-file text.
        gossip_keys: String,
        /// Where to join gossip.
        gossip_seed: SocketAddrV4,
        /// Heartbeat period, seconds.
        heartbeat_secs: u64,
    },
    /// Done; keep heartbeating at this period.
    Ok {
        /// Seconds.
        heartbeat_secs: u64,
        /// The swarm's gossip key ring, when this node's is older (a
        /// rotation is under way).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gossip_keys: Option<GossipKeys>,
    },
    /// A renewed certificate.
    Renewed {
        /// PEM.
        cert: String,
    },
    /// The node's tasks.
    Assignments {
        /// Their digest, for the next long poll.
        digest: u64,
        /// Every task assigned to the node.
        tasks: Vec<Task>,
        /// The node's routing-mesh address on the `ingress` network.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mesh: Option<shoal_orch::Attachment>,
    },
    /// The request failed.
    Error {
        /// Why, for the user.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_in_their_envelope() {
        let request = Request::Assignments { known: 42 };
        assert_eq!(decode::<Request>(&encode(&request)), Ok(request));
        let text = String::from_utf8(encode(&Response::Ok { heartbeat_secs: 5, gossip_keys: None })).unwrap();
        assert!(text.starts_with(&format!(r#"{{"protocol":{VERSION},"build":""#)), "{text}");
    }

    #[test]
    fn another_version_is_named_not_misdecoded() {
        let next = VERSION + 1;
        let future =
            format!(r#"{{"protocol":{next},"build":"9.9.9","body":{{"Heartbeat2":{{"extra":1}}}}}}"#);
        let err = decode::<Request>(future.as_bytes()).unwrap_err();
        assert_eq!(err, ProtocolError::Version { peer: next, peer_build: "9.9.9".into() });
        let text = err.to_string();
        assert!(
            text.contains(&format!("shoal 9.9.9 (protocol {next})"))
                && text.contains("run the same Shoal version"),
            "{text}"
        );
        // A build from before envelopes sent bare messages.
        let old = br#"{"Assignments":{"known":1}}"#;
        assert!(matches!(decode::<Request>(old), Err(ProtocolError::Version { peer: 0, .. })));
        assert!(matches!(decode::<Request>(b"not json"), Err(ProtocolError::Decode(_))));
    }
}
