//! Flag values every verb parses the same way: docker's duration grammar,
//! sizes, CPUs, and the enum flags as clap `ValueEnum`s.

use clap::ValueEnum;
use shoal_orch::{FailureAction, RestartCondition, UpdateOrder};

// Durations, sizes, CPUs and ratios are compose files' values too: one
// parser for both, in `shoal-compose`.
pub use shoal_compose::units::{bytes, cpus, duration_ms, duration_secs, ratio};

/// A signal name (`SIGTERM`, `TERM`) or number.
pub fn signal(text: &str) -> Result<String, String> {
    if shoal_runtime::exec::signal(text).is_some() {
        Ok(text.to_owned())
    } else {
        Err(format!("invalid signal {text:?}: use a name such as SIGTERM or SIGQUIT, or a number"))
    }
}

/// `--restart-condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Condition {
    /// Never restart.
    None,
    /// Restart when the task failed.
    OnFailure,
    /// Restart whenever the task stopped.
    Any,
}

impl From<Condition> for RestartCondition {
    fn from(c: Condition) -> RestartCondition {
        match c {
            Condition::None => RestartCondition::None,
            Condition::OnFailure => RestartCondition::OnFailure,
            Condition::Any => RestartCondition::Any,
        }
    }
}

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    /// Stop the update.
    Pause,
    /// Keep going.
    Continue,
    /// Return to the previous spec.
    Rollback,
}

/// `--rollback-failure-action`: a rollback cannot roll back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RollbackAction {
    /// Stop the rollback.
    Pause,
    /// Keep going.
    Continue,
}

impl From<Action> for FailureAction {
    fn from(a: Action) -> FailureAction {
        match a {
            Action::Pause => FailureAction::Pause,
            Action::Continue => FailureAction::Continue,
            Action::Rollback => FailureAction::Rollback,
        }
    }
}

impl From<RollbackAction> for FailureAction {
    fn from(a: RollbackAction) -> FailureAction {
        match a {
            RollbackAction::Pause => FailureAction::Pause,
            RollbackAction::Continue => FailureAction::Continue,
        }
    }
}

/// `--update-order`, `--rollback-order`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Order {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

impl From<Order> for UpdateOrder {
    fn from(o: Order) -> UpdateOrder {
        match o {
            Order::StopFirst => UpdateOrder::StopFirst,
            Order::StartFirst => UpdateOrder::StartFirst,
        }
    }
}

/// `service create --mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ServiceMode {
    /// A number of tasks.
    #[default]
    Replicated,
    /// One task per eligible node.
    Global,
}

/// `--endpoint-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EndpointMode {
    /// One virtual IP, balanced over the tasks.
    Vip,
    /// The name answers the task addresses.
    Dnsrr,
}

impl From<EndpointMode> for shoal_orch::EndpointMode {
    fn from(m: EndpointMode) -> shoal_orch::EndpointMode {
        match m {
            EndpointMode::Vip => shoal_orch::EndpointMode::Vip,
            EndpointMode::Dnsrr => shoal_orch::EndpointMode::Dnsrr,
        }
    }
}

/// `--lb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Lb {
    /// Each task in turn.
    RoundRobin,
    /// The task with the fewest connections.
    LeastConn,
    /// Consistent hashing: a task that goes moves only its own flows.
    Maglev,
}

impl From<Lb> for shoal_orch::LbPolicy {
    fn from(l: Lb) -> shoal_orch::LbPolicy {
        match l {
            Lb::RoundRobin => shoal_orch::LbPolicy::RoundRobin,
            Lb::LeastConn => shoal_orch::LbPolicy::LeastConn,
            Lb::Maglev => shoal_orch::LbPolicy::Maglev,
        }
    }
}

/// The client-IP affinity timeout when `--lb-affinity client-ip` names none.
pub const DEFAULT_AFFINITY_MS: u64 = 3 * 3600 * 1000;

/// Client-IP affinity: its timeout in ms, or `None` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affinity(pub Option<u64>);

impl From<Affinity> for Option<u64> {
    fn from(a: Affinity) -> Option<u64> {
        a.0
    }
}

/// `--lb-affinity none|client-ip[:TIMEOUT]`.
pub fn affinity(text: &str) -> Result<Affinity, String> {
    match text.split_once(':') {
        None if text == "none" => Ok(Affinity(None)),
        None if text == "client-ip" => Ok(Affinity(Some(DEFAULT_AFFINITY_MS))),
        Some(("client-ip", timeout)) => duration_ms(timeout).map(|ms| Affinity(Some(ms))),
        _ => Err(format!(
            "invalid affinity {text:?}: use none, client-ip or client-ip:TIMEOUT (such as client-ip:10m)"
        )),
    }
}

/// `--dns-ttl`: a duration in whole seconds (0 allowed: answers not cached).
pub fn dns_ttl(text: &str) -> Result<u32, String> {
    let ms = duration_ms(text)?;
    u32::try_from(ms / 1000).map_err(|_| format!("invalid DNS TTL {text:?}: use at most 68 years"))
}

/// `node update --availability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    /// Takes new tasks.
    Active,
    /// Keeps its tasks, takes no new ones.
    Pause,
    /// Its tasks move away.
    Drain,
}

impl From<Availability> for shoal_control::Availability {
    fn from(a: Availability) -> shoal_control::Availability {
        match a {
            Availability::Active => shoal_control::Availability::Active,
            Availability::Pause => shoal_control::Availability::Pause,
            Availability::Drain => shoal_control::Availability::Drain,
        }
    }
}

/// `swarm join-token ROLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Runs tasks.
    Worker,
    /// Holds cluster state.
    Manager,
}

impl Role {
    /// `worker` or `manager`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balancing_flags() {
        assert_eq!(affinity("none"), Ok(Affinity(None)));
        assert_eq!(affinity("client-ip"), Ok(Affinity(Some(DEFAULT_AFFINITY_MS))));
        assert_eq!(affinity("client-ip:10m"), Ok(Affinity(Some(600_000))));
        assert!(affinity("cookie").unwrap_err().contains("use none, client-ip"));
        assert_eq!(dns_ttl("30s"), Ok(30));
        assert_eq!(dns_ttl("0"), Ok(0));
        assert!(dns_ttl("5").is_err());
    }
}
