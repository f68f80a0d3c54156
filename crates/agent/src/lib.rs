//! The node agent: everything `shoal daemon` runs on a node, wired
//! together, with the local API the CLI talks to.
//!
//! Arrows only go down, from the top:
//! `daemon` -> `api` -> `node` -> (`swarm`, `mesh`, `tasks`) -> (`endpoints`,
//! `volumes`) -> (`routes`, `directory`, `gossip_driver`) -> (`metrics`, `settings`,
//! `keys`, `names`, `clock`, `error`). `standalone` is the static-file data plane beside
//! them. See ARCHITECTURE.md for each module's invariants.

#![forbid(unsafe_code)]

pub mod api;
pub mod clock;
pub mod daemon;
pub mod directory;
pub mod dns;
pub mod endpoints;
pub mod error;
pub mod gossip_driver;
pub mod keys;
pub mod mesh;
pub mod metrics;
pub mod names;
pub mod node;
pub mod routes;
mod serde_text;
pub mod settings;
pub mod standalone;
pub mod swarm;
pub mod tasks;
pub mod vips;
pub mod volumes;

pub use error::{Error, Result};
pub use node::Node;
pub use settings::Settings;
