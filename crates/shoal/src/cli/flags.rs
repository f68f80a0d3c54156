//! Flag values every verb parses the same way: docker's duration grammar,
//! sizes, CPUs, and the enum flags as clap `ValueEnum`s.

use clap::ValueEnum;
use shoal_orch::{FailureAction, RestartCondition, UpdateOrder};

/// A duration in docker's (Go's) grammar: a sequence of numbers with units
/// `ns`, `us` (`µs`), `ms`, `s`, `m`, `h`, such as `300ms`, `1m30s`, `1.5h`;
/// `0` alone needs no unit. In milliseconds, rounded.
pub fn duration_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a number with a unit (ns, us, ms, s, m, h), such as 500ms, 90s or 1m30s"
        )
    };
    if text == "0" {
        return Ok(0);
    }
    if text.is_empty() {
        return Err(bad());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return Err(bad()),
        };
        total += n * scale;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total.round() as u64)
}

/// A duration in docker's grammar, in whole seconds (at least one).
pub fn duration_secs(text: &str) -> Result<u64, String> {
    let ms = duration_ms(text)?;
    if ms < 1000 {
        return Err(format!("invalid duration {text:?}: use at least 1s"));
    }
    Ok(ms / 1000)
}

/// A size such as `64M`, `1g`, `512k` or `1048576`, in bytes.
pub fn bytes(text: &str) -> Result<u64, String> {
    let bad =
        || format!("invalid size {text:?}: use a number with an optional unit b, k, m or g, such as 64M");
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b').trim_end_matches('i');
    let (number, scale) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        Some('t') => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ => (trimmed, 1),
    };
    let n: f64 = number.parse().map_err(|_| bad())?;
    if n < 0.0 {
        return Err(bad());
    }
    Ok((n * scale as f64) as u64)
}

/// CPUs such as `0.5`, in nano-CPUs.
pub fn cpus(text: &str) -> Result<u64, String> {
    match text.parse::<f64>() {
        Ok(n) if (0.0..=1024.0).contains(&n) => Ok((n * 1e9) as u64),
        _ => Err(format!("invalid number of CPUs {text:?}: use a number such as 0.5")),
    }
}

/// A failure ratio between 0 and 1.
pub fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid failure ratio {text:?}: use a number between 0 and 1")),
    }
}

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
    fn durations_follow_docker() {
        assert_eq!(duration_ms("5s"), Ok(5000));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("1h30m"), Ok(5_400_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("1.5s"), Ok(1500));
        assert_eq!(duration_ms("2160h"), Ok(2160 * 3_600_000));
        assert_eq!(duration_ms("0"), Ok(0));
        for bad in ["5", "5x", "", "s", "1d", "-1s"] {
            assert!(duration_ms(bad).unwrap_err().contains("invalid duration"), "{bad}");
        }
        assert_eq!(duration_secs("90s"), Ok(90));
        assert!(duration_secs("500ms").is_err());
        assert!(duration_secs("0").is_err());
    }

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

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(bytes("64M"), Ok(64 << 20));
        assert_eq!(bytes("1g"), Ok(1 << 30));
        assert_eq!(bytes("512k"), Ok(512 << 10));
        assert_eq!(bytes("100"), Ok(100));
        assert!(bytes("lots").is_err());
        assert_eq!(cpus("0.5"), Ok(500_000_000));
        assert!(cpus("-1").is_err());
        assert_eq!(ratio("0.2"), Ok(0.2));
        assert!(ratio("2").is_err());
    }
}
