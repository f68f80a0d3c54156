//! Healthchecks: the verdict of successive checks as a pure state machine
//! ([`HealthMonitor`]), and one check run inside a task ([`run_check`]).

use std::path::PathBuf;
use std::time::Duration;

use shoal_orch::HealthCheck;
use shoal_runtime::EnterSpec;

/// A task's health, as docker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No verdict yet.
    Starting,
    /// The last check passed.
    Healthy,
    /// `retries` checks in a row failed after the start period.
    Unhealthy,
}

impl Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// The verdict of a task's checks. No IO, no clock: each check's result
/// comes in with the time since the task started.
#[derive(Debug, Clone)]
pub struct HealthMonitor {
    policy: HealthCheck,
    health: Health,
    failures: u64,
}

impl HealthMonitor {
    /// A task that just started.
    pub fn new(policy: HealthCheck) -> HealthMonitor {
        HealthMonitor { policy, health: Health::Starting, failures: 0 }
    }

    /// The policy.
    pub fn policy(&self) -> &HealthCheck {
        &self.policy
    }

    /// Failed checks in a row.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Takes one check's result, `since_start` after the task started;
    /// returns the new health if it changed. A pass resets the failures;
    /// failures inside the start period do not count.
    #[must_use]
    pub fn observe(&mut self, healthy: bool, since_start: Duration) -> Option<Health> {
        let verdict = if healthy {
            self.failures = 0;
            Some(Health::Healthy)
        } else if since_start >= Duration::from_millis(self.policy.start_period_ms) {
            self.failures += 1;
            (self.failures >= self.policy.retries.max(1)).then_some(Health::Unhealthy)
        } else {
            None
        };
        let changed = verdict.filter(|v| *v != self.health)?;
        self.health = changed;
        Some(changed)
    }
}

/// Runs the healthcheck command inside the task (through `shoal __enter`);
/// true when it exits 0 within `timeout`.
pub async fn run_check(enter: &EnterSpec, cmd: &str, timeout: Duration) -> bool {
    let mut spec = enter.clone();
    spec.argv = vec!["/bin/sh".into(), "-c".into(), cmd.into()];
    let exe = PathBuf::from("/proc/self/exe");
    let Ok(mut child) = tokio::process::Command::new(exe)
        .arg("__enter")
        .arg(serde_json::to_string(&spec).expect("serialisable"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
    else {
        return false;
    };
    matches!(tokio::time::timeout(timeout.max(Duration::from_millis(100)), child.wait()).await, Ok(Ok(s)) if s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(retries: u64, start_period_ms: u64) -> HealthCheck {
        HealthCheck { cmd: "true".into(), interval_ms: 1000, timeout_ms: 1000, retries, start_period_ms }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn retries_in_a_row_make_a_task_unhealthy() {
        let mut m = HealthMonitor::new(policy(3, 0));
        assert_eq!(m.observe(true, S(1)), Some(Health::Healthy));
        assert_eq!(m.observe(true, S(2)), None, "no change, no report");
        assert_eq!(m.observe(false, S(3)), None);
        assert_eq!(m.observe(false, S(4)), None);
        assert_eq!(m.observe(true, S(5)), None, "a pass resets the count");
        assert_eq!(m.failures(), 0);
        assert_eq!(m.observe(false, S(6)), None);
        assert_eq!(m.observe(false, S(7)), None);
        assert_eq!(m.observe(false, S(8)), Some(Health::Unhealthy));
        assert_eq!(m.failures(), 3);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let mut m = HealthMonitor::new(policy(1, 10_000));
        assert_eq!(m.observe(false, S(1)), None);
        assert_eq!(m.observe(false, S(9)), None);
        assert_eq!(m.failures(), 0);
        assert_eq!(m.observe(false, S(10)), Some(Health::Unhealthy));
        // Zero retries means one failure, as docker treats it.
        let mut m = HealthMonitor::new(policy(0, 0));
        assert_eq!(m.observe(false, S(1)), Some(Health::Unhealthy));
    }
}
