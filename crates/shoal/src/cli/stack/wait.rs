//! Waiting for a deployed stack's services to run, and saying why when
//! they cannot: above all a compose file's `image:` that is not a program
//! on a node (Shoal runs programs, not container images).

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal_agent::api::views::{Node, Service, ServiceTasks};
use shoal_orch::TaskState;

use crate::cli::client::Client;
use crate::cli::out;

/// How long a deploy waits in all.
const LIMIT: Duration = Duration::from_secs(180);
/// Between looks.
const POLL: Duration = Duration::from_millis(300);
/// Once a program is found missing, how long to wait for the other
/// services' news, so that one message names them all.
const GATHER: Duration = Duration::from_secs(3);

/// Whether a task error says the program is not on the node.
fn program_missing(err: &str) -> bool {
    err.contains("executable file not found") || err.contains("no such executable file")
}

/// Waits until the services `ids` run their desired tasks; fails at once
/// when a service's program is missing on a node, and after [`LIMIT`]
/// with each unfinished service's last task error.
pub fn converge(client: &Client, ids: &[String], quiet: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut first_missing: Option<Instant> = None;
    let mut done: BTreeSet<String> = BTreeSet::new();
    loop {
        let services: Vec<Service> = client.get("/v1/services")?;
        let nodes: Vec<Node> = client.get("/v1/nodes")?;
        let hostname: HashMap<&str, &str> =
            nodes.iter().map(|n| (n.id.as_str(), n.description.hostname.as_str())).collect();
        let mut missing = Vec::new();
        let mut waiting = Vec::new();
        // Services neither converged nor missing their program.
        let mut still_starting = 0;
        for id in ids {
            let Some(s) = services.iter().find(|s| &s.id == id) else { continue };
            let status = s.service_status;
            let updating =
                s.update_status.as_ref().is_some_and(|u| u.state == shoal_orch::UpdateState::Updating);
            if status.running_tasks >= status.desired_tasks && !updating {
                if done.insert(id.clone()) && !quiet {
                    writeln!(
                        out(),
                        "{}: {}/{} running",
                        s.spec.name,
                        status.running_tasks,
                        status.desired_tasks
                    )?;
                }
                continue;
            }
            let ServiceTasks { tasks, .. } = client.get(&format!("/v1/services/{id}/tasks"))?;
            let image = &s.spec.task_template.container_spec.image;
            let mut last_error = None;
            let mut this_missing = false;
            for t in tasks.iter().filter(|t| &t.spec.container_spec.image == image) {
                let Some(err) = &t.status.err else { continue };
                let node = t.node_id.as_deref().map_or("?", |n| hostname.get(n).copied().unwrap_or(n));
                if matches!(t.status.state, TaskState::Rejected | TaskState::Failed) && program_missing(err) {
                    missing.push(format!(
                        "service {}: image {image:?} is not a program on node {node} ({err})",
                        s.spec.name
                    ));
                    this_missing = true;
                }
                last_error = Some(err.clone());
            }
            if !this_missing {
                still_starting += 1;
            }
            waiting.push(match last_error {
                Some(err) => format!("{}: {err}", s.spec.name),
                None => format!("{}: {}/{} running", s.spec.name, status.running_tasks, status.desired_tasks),
            });
        }
        let since = match missing.is_empty() {
            true => None,
            false => Some(*first_missing.get_or_insert_with(Instant::now)),
        };
        if since.is_some_and(|t| still_starting == 0 || t.elapsed() > GATHER) {
            missing.sort();
            missing.dedup();
            bail!(
                "{}\nShoal runs programs found on each node's PATH, not container images: set the service's \
                 image: to a program installed on every node (such as python3 or redis-server), \
                 or install it on the nodes named, then run stack deploy again",
                missing.join("\n")
            );
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if start.elapsed() > LIMIT {
            bail!(
                "the stack's services did not converge within {}s:\n{}\nsee `shoal stack ps` for each task's state",
                LIMIT.as_secs(),
                waiting.join("\n")
            );
        }
        std::thread::sleep(POLL);
    }
}
