//! The view docker shows while a service converges: one bar per slot (or
//! node, for a global service) with indicatif on a terminal, plain lines
//! otherwise; it fails with the task's error when the service cannot
//! converge, and like docker it waits out the update monitor period before
//! calling the service converged.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal_agent::api::views::{Mode, ServiceTasks, Task};
use shoal_orch::{RestartCondition, TaskState, UpdateState};

use crate::cli::client::Client;
use crate::cli::{out, short};

/// The states a task goes through to running, as the bars count them.
const STEPS: [TaskState; 8] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Ready,
    TaskState::Starting,
    TaskState::Running,
];

/// How long a task may stay pending before the service is declared stuck.
const PENDING_LIMIT: Duration = Duration::from_secs(5);
/// Failed tasks (of the current spec) before the service is declared stuck.
const FAILURES_LIMIT: usize = 3;
/// How long to wait in all.
const LIMIT: Duration = Duration::from_secs(180);
/// Between looks.
const POLL: Duration = Duration::from_millis(200);

fn step(state: TaskState) -> u64 {
    STEPS.iter().position(|s| *s == state).unwrap_or(0) as u64
}

fn state_name(state: TaskState) -> String {
    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Where one slot (or global node) stands: its newest current task.
struct SlotView {
    id: String,
    label: String,
    state: TaskState,
    err: Option<String>,
}

/// Waits until the service `id` converges, showing docker's progress view;
/// says why and fails if it cannot.
pub fn converge(client: &Client, id: &str, quiet: bool) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal() && !quiet;
    let multi = indicatif::MultiProgress::new();
    let overall = multi.add(indicatif::ProgressBar::new_spinner());
    let mut bars: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    let style = indicatif::ProgressStyle::with_template("{prefix}: {msg:<10} [{bar:50}]")
        .expect("valid template")
        .progress_chars("=> ");
    let started = Instant::now();
    let mut last_line = String::new();
    let mut stuck_since: Option<Instant> = None;
    let mut stable: Option<(Instant, Vec<String>)> = None;
    let mut announced = false;
    let clear = |multi: &indicatif::MultiProgress| {
        if tty {
            multi.clear().ok();
        }
    };
    loop {
        let ServiceTasks { service, tasks } = client.get(&format!("/v1/services/{id}/tasks"))?;
        let spec = &service.spec;
        let name = spec.name.as_str();
        let global = matches!(spec.mode, Mode::Global {});
        let update_state = service.update_status.as_ref().map(|u| u.state);
        if let Some(u) = &service.update_status
            && matches!(u.state, UpdateState::Paused | UpdateState::RollbackPaused)
        {
            clear(&multi);
            bail!("{}", u.message);
        }
        // The newest runnable task per slot (node for global services).
        let current = |t: &Task| t.spec == spec.task_template;
        let mut slots: BTreeMap<String, SlotView> = BTreeMap::new();
        let mut failures = Vec::new();
        for t in &tasks {
            let state = t.status.state;
            if current(t) && matches!(state, TaskState::Failed | TaskState::Rejected) {
                failures.push(t.status.err.clone().unwrap_or_else(|| state_name(state)));
            }
            if t.desired_state != TaskState::Running || !current(t) {
                continue;
            }
            let node = t.node_id.as_deref().map(short).unwrap_or_default().to_owned();
            let key = if global { node.clone() } else { format!("{:>6}", t.slot) };
            let newer =
                slots.get(&key).is_none_or(|s| step(s.state) <= step(state) || s.state == TaskState::Running);
            if newer {
                let label = if global { node } else { t.slot.to_string() };
                slots.insert(key, SlotView { id: t.id.clone(), label, state, err: t.status.err.clone() });
            }
        }
        let total = if global { slots.len() } else { service.service_status.desired_tasks as usize };
        let running = slots.values().filter(|s| s.state == TaskState::Running).count();
        let active = matches!(update_state, Some(UpdateState::Updating | UpdateState::RollbackStarted));
        let prefix =
            |slot: &SlotView| if global { slot.label.clone() } else { format!("{}/{total}", slot.label) };
        let line = format!("overall progress: {running} out of {total} tasks");
        if tty {
            if stable.is_none() {
                overall.set_message(line.clone());
            }
            overall.tick();
            for (key, slot) in &slots {
                let bar = bars.entry(key.clone()).or_insert_with(|| {
                    let b = multi.add(indicatif::ProgressBar::new(STEPS.len() as u64 - 1));
                    b.set_style(style.clone());
                    b
                });
                bar.set_prefix(prefix(slot));
                let pending_why = slot.err.clone().filter(|_| slot.state == TaskState::Pending);
                bar.set_message(pending_why.unwrap_or_else(|| state_name(slot.state)));
                bar.set_position(step(slot.state));
            }
        } else if !quiet && line != last_line {
            writeln!(out(), "{line}")?;
        }
        last_line = line;
        let all_running =
            running >= total && slots.values().all(|s| s.state == TaskState::Running) && !active;
        // As docker does, wait out the monitor period before calling the
        // service converged: a task that dies right after starting counts.
        let ids: Vec<String> = slots.values().map(|s| s.id.clone()).collect();
        let monitor = Duration::from_nanos(spec.update_config.monitor);
        let stable_for = match (&stable, all_running) {
            (Some((since, seen)), true) if *seen == ids => since.elapsed(),
            (_, true) => {
                stable = Some((Instant::now(), ids));
                if !monitor.is_zero() && !quiet {
                    let text = format!(
                        "verify: Waiting {} seconds to verify that tasks are stable...",
                        monitor.as_secs_f64().ceil()
                    );
                    if tty {
                        overall.set_message(text);
                    } else if !announced {
                        writeln!(out(), "{text}")?;
                    }
                    announced = true;
                }
                Duration::ZERO
            }
            (_, false) => {
                stable = None;
                Duration::ZERO
            }
        };
        if all_running && stable_for >= monitor {
            if tty {
                overall.finish_with_message(format!("overall progress: {running} out of {total} tasks"));
                for b in bars.values() {
                    b.finish();
                }
            }
            if !quiet {
                let mut o = out();
                if !tty {
                    // The final view, as docker leaves it on the screen.
                    for slot in slots.values() {
                        writeln!(o, "{}: running   [{}>]", prefix(slot), "=".repeat(50))?;
                    }
                }
                writeln!(o, "verify: Service converged")?;
            }
            return Ok(());
        }
        // Cannot converge: a task that stays pending, or tasks that keep failing.
        let pending =
            slots.values().find_map(|s| (s.state == TaskState::Pending).then(|| s.err.clone()).flatten());
        if let Some(reason) = &pending {
            let since = *stuck_since.get_or_insert_with(Instant::now);
            if since.elapsed() > PENDING_LIMIT {
                clear(&multi);
                bail!("service {name} cannot converge: {reason}");
            }
        } else {
            stuck_since = None;
        }
        let no_restarts = spec.task_template.restart_policy.condition == RestartCondition::None;
        if failures.len() >= FAILURES_LIMIT || (!failures.is_empty() && no_restarts) {
            clear(&multi);
            bail!("service {name} cannot converge: {} (see `shoal service ps {name}`)", failures[0]);
        }
        if started.elapsed() > LIMIT {
            bail!("the service did not converge in {} s: see `shoal service ps`", LIMIT.as_secs());
        }
        std::thread::sleep(POLL);
    }
}
