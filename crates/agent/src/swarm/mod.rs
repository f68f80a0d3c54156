//! This node in a swarm: membership (`swarm init/join/leave`), the
//! manager's control plane, records and orchestration, dispatch, and a
//! worker's session. Arrows go down: `membership` -> `manager`, `worker`
//! -> `dispatch` -> `orchestration` -> `records`, `config`.

mod config;
mod dispatch;
pub mod manager;
mod membership;
pub mod orchestration;
mod records;
mod worker;

pub use manager::{Manager, NodeUpdate};
pub use membership::{InitRequest, Initialized, Joined, RoleEvent, Swarm, SwarmInfo};
pub use orchestration::Orchestration;
