//! What `service ls`, `ps`, `inspect --pretty` and `logs` print: docker's
//! tables, and rows with the field names of docker's `--format`.

use std::collections::HashMap;
use std::io::Write;

use serde::Serialize;
use shoal_agent::api::views::{Mode, Node, PortView, Service, ServiceTasks};
use shoal_orch::{ServiceSpec, TaskState};

use crate::cli::client::Client;
use crate::cli::{Format, LabelFilter, Listing, ago, out, short, title};

fn ports_text(ports: &[PortView]) -> String {
    ports
        .iter()
        .map(|p| format!("*:{}->{}/{}", p.published_port, p.target_port, p.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `service ls` row, with the field names of `docker service ls --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct LsRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    mode: String,
    replicas: String,
    image: String,
    ports: String,
}

/// `service ls` filters, as docker's: `id=` and `name=` prefixes,
/// `label=KEY` or `label=KEY=VALUE`, `mode=replicated|global`; filters of
/// one kind are alternatives, of different kinds all apply.
#[derive(Debug, Default, Clone)]
pub struct LsFilter {
    id: Vec<String>,
    name: Vec<String>,
    label: LabelFilter,
    mode: Vec<String>,
}

impl LsFilter {
    /// Parses `--filter` values.
    pub fn parse(filters: &[String]) -> anyhow::Result<LsFilter> {
        let mut f = LsFilter::default();
        for text in filters {
            match text.split_once('=') {
                Some(("id", v)) => f.id.push(v.to_owned()),
                Some(("name", v)) => f.name.push(v.to_owned()),
                Some(("label", v)) if f.label.add(v) => {}
                Some(("mode", v)) if v == "replicated" || v == "global" => f.mode.push(v.to_owned()),
                _ => anyhow::bail!(
                    "invalid filter {text:?}: use id=ID, name=NAME, label=KEY[=VALUE] or mode=replicated|global"
                ),
            }
        }
        Ok(f)
    }

    /// Whether `s` passes.
    pub fn admits(&self, s: &Service) -> bool {
        let mode = if matches!(s.spec.mode, Mode::Global {}) { "global" } else { "replicated" };
        (self.id.is_empty() || self.id.iter().any(|p| s.id.starts_with(p.as_str())))
            && (self.name.is_empty() || self.name.iter().any(|p| s.spec.name.starts_with(p.as_str())))
            && (self.mode.is_empty() || self.mode.iter().any(|m| m == mode))
            && self.label.admits(&s.spec.labels)
    }
}

/// `service ls`, and `stack services` (the services with the stack's
/// label `(key, value)`).
pub fn ls(client: &Client, options: &super::LsOptions, label: Option<(&str, &str)>) -> anyhow::Result<()> {
    let super::LsOptions { ref filter, quiet, ref format } = *options;
    let mut filter = LsFilter::parse(filter)?;
    if let Some((key, value)) = label {
        filter.label.add(&format!("{key}={value}"));
    }
    let mut services: Vec<Service> = client.get("/v1/services")?;
    services.retain(|s| filter.admits(s));
    if quiet {
        for s in &services {
            writeln!(out(), "{}", s.id)?;
        }
        return Ok(());
    }
    let rows = services
        .iter()
        .map(|s| {
            let status = s.service_status;
            let mut replicas = format!("{}/{}", status.running_tasks, status.desired_tasks);
            let max = s.spec.task_template.placement.max_replicas;
            if max > 0 {
                replicas.push_str(&format!(" (max {max} per node)"));
            }
            LsRow {
                id: short(&s.id).to_owned(),
                name: s.spec.name.clone(),
                mode: if matches!(s.spec.mode, Mode::Global {}) { "global" } else { "replicated" }.into(),
                replicas,
                image: s.spec.task_template.container_spec.image.clone(),
                ports: ports_text(&s.spec.endpoint_spec.ports),
            }
        })
        .collect();
    let listing = Listing {
        rows,
        headers: &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
        cells: |r: &LsRow| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.mode.clone(),
                r.replicas.clone(),
                r.image.clone(),
                r.ports.clone(),
            ]
        },
    };
    listing.print(format)
}

/// A `service ps` row, with the field names of `docker service ps --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct PsRow {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    image: String,
    node: String,
    desired_state: String,
    current_state: String,
    error: String,
    ports: String,
}

/// `service ps` filters.
#[derive(Debug, Default)]
pub struct PsFilter {
    desired: Vec<String>,
    node: Vec<String>,
    name: Vec<String>,
}

impl PsFilter {
    /// Parses `--filter` values.
    pub fn parse(filters: &[String]) -> anyhow::Result<PsFilter> {
        let mut f = PsFilter::default();
        for text in filters {
            match text.split_once('=') {
                Some(("desired-state", v))
                    if ["running", "shutdown", "accepted", "ready", "remove"].contains(&v) =>
                {
                    f.desired.push(v.to_owned())
                }
                Some(("node", v)) => f.node.push(v.to_owned()),
                Some(("name", v)) => f.name.push(v.to_owned()),
                _ => anyhow::bail!(
                    "invalid filter {text:?}: use desired-state=running|shutdown|accepted, node=NODE or name=NAME"
                ),
            }
        }
        Ok(f)
    }

    fn admits(&self, desired: &str, node: &str, name: &str) -> bool {
        let desired_ok = self.desired.is_empty()
            || self.desired.iter().any(|w| w == desired || (w == "accepted" && desired == "running"));
        desired_ok
            && (self.node.is_empty() || self.node.iter().any(|n| n == node))
            && (self.name.is_empty() || self.name.iter().any(|n| n == name))
    }
}

/// `service ps SERVICE...` (and `stack ps`): one table of the services'
/// tasks.
pub fn ps(client: &Client, services: &[String], options: &super::PsOptions) -> anyhow::Result<()> {
    let super::PsOptions { no_trunc, ref filter, quiet, ref format } = *options;
    let filter = &PsFilter::parse(filter)?;
    let nodes: Vec<Node> = client.get("/v1/nodes")?;
    let hostnames: HashMap<&str, &str> =
        nodes.iter().map(|n| (n.id.as_str(), n.description.hostname.as_str())).collect();
    let mut rows = Vec::new();
    let mut previous_slot = None;
    let mut all = Vec::new();
    for name in services {
        let ServiceTasks { service, tasks } = client.get(&format!("/v1/services/{name}/tasks"))?;
        all.extend(tasks.into_iter().map(|t| (service.clone(), t)));
    }
    for (service, t) in &all {
        let desired = serde_json::to_value(t.desired_state)?.as_str().unwrap_or_default().to_owned();
        let node = t.node_id.as_deref().map_or("", |id| hostnames.get(id).copied().unwrap_or(id));
        if !filter.admits(&desired, node, &t.name) {
            continue;
        }
        let id = if no_trunc { t.id.clone() } else { short(&t.id).to_owned() };
        if quiet {
            writeln!(out(), "{id}")?;
            continue;
        }
        // Earlier tasks of a slot show under its newest, as docker nests them.
        let slot_key = (&t.service_id, t.slot, if t.slot == 0 { node.to_owned() } else { String::new() });
        let nested = previous_slot.as_ref() == Some(&slot_key) && *format == Format::Table;
        previous_slot = Some(slot_key);
        let mut error = t.status.err.as_deref().map(|e| format!("\"{e}\"")).unwrap_or_default();
        if !no_trunc && error.chars().count() > 30 {
            error = format!("{}…\"", error.chars().take(28).collect::<String>());
        }
        let state_ms = shoal_agent::clock::parse_rfc3339(&t.status.timestamp).unwrap_or(0);
        let state = serde_json::to_value(t.status.state)?.as_str().unwrap_or_default().to_owned();
        let mut image = t.spec.container_spec.image.clone();
        if !no_trunc && image.len() > 30 {
            image.truncate(30);
        }
        rows.push(PsRow {
            id,
            name: if nested { format!(" \\_ {}", t.name) } else { t.name.clone() },
            image,
            node: node.to_owned(),
            desired_state: title(&desired),
            current_state: format!("{} {}", title(&state), ago(state_ms)),
            error,
            ports: if t.status.state == TaskState::Running {
                ports_text(&service.spec.endpoint_spec.ports)
            } else {
                String::new()
            },
        });
    }
    if quiet {
        return Ok(());
    }
    let listing = Listing {
        rows,
        headers: &["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"],
        cells: |r: &PsRow| {
            vec![
                r.id.clone(),
                r.name.clone(),
                r.image.clone(),
                r.node.clone(),
                r.desired_state.clone(),
                r.current_state.clone(),
                r.error.clone(),
                r.ports.clone(),
            ]
        },
    };
    listing.print(format)
}

fn ms_text(ms: u64) -> String {
    if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn enum_text(value: &impl Serialize) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// `service inspect --pretty`.
pub fn pretty(services: &[Service]) -> anyhow::Result<()> {
    let mut o = out();
    for (i, s) in services.iter().enumerate() {
        if i > 0 {
            writeln!(o)?;
        }
        let spec = ServiceSpec::try_from(&s.spec)?;
        writeln!(o, "ID:\t\t{}", s.id)?;
        writeln!(o, "Name:\t\t{}", spec.name)?;
        match spec.mode {
            shoal_orch::Mode::Replicated { replicas } => {
                writeln!(o, "Service Mode:\tReplicated\n Replicas:\t{replicas}")?
            }
            shoal_orch::Mode::Global => writeln!(o, "Service Mode:\tGlobal")?,
        }
        if let Some(u) = &s.update_status {
            writeln!(o, "UpdateStatus:\n State:\t\t{}", enum_text(&u.state))?;
            writeln!(o, " Message:\t{}", u.message)?;
        }
        let t = &spec.task;
        writeln!(o, "Placement:")?;
        if !t.placement.constraints.is_empty() {
            writeln!(o, " Constraints:\t[{}]", t.placement.constraints.join(" "))?;
        }
        for p in &t.placement.spread {
            writeln!(o, " Preferences:\tspread=node.labels.{p}")?;
        }
        if t.placement.max_replicas > 0 {
            writeln!(o, " Max Replicas Per Node:\t{}", t.placement.max_replicas)?;
        }
        for (heading, u) in [("UpdateConfig", &spec.update), ("RollbackConfig", &spec.rollback)] {
            writeln!(o, "{heading}:\n Parallelism:\t{}", u.parallelism)?;
            if u.delay_ms > 0 {
                writeln!(o, " Delay:\t\t{}", ms_text(u.delay_ms))?;
            }
            writeln!(o, " On failure:\t{}", enum_text(&u.failure_action))?;
            writeln!(o, " Monitoring Period: {}", ms_text(u.monitor_ms))?;
            writeln!(o, " Max failure ratio: {}", u.max_failure_ratio)?;
            writeln!(o, " Update order:      {}", enum_text(&u.order))?;
        }
        writeln!(o, "ContainerSpec:\n Image:\t\t{}", t.image)?;
        if !t.args.is_empty() {
            writeln!(o, " Args:\t\t{}", t.args.join(" "))?;
        }
        if !t.env.is_empty() {
            writeln!(o, " Env:\t\t{}", t.env.join(" "))?;
        }
        if let Some(w) = &t.workdir {
            writeln!(o, " Dir:\t\t{w}")?;
        }
        if let Some(u) = &t.user {
            writeln!(o, " User:\t\t{u}")?;
        }
        if let Some(h) = &t.health {
            writeln!(
                o,
                " Healthcheck:\t{} (every {}, {} retries)",
                h.cmd,
                ms_text(h.interval_ms),
                h.retries
            )?;
        }
        let r = &t.resources;
        if r.limit_nano_cpus + r.limit_memory + r.limit_pids > 0 {
            writeln!(o, "Resources:\n Limits:")?;
            if r.limit_nano_cpus > 0 {
                writeln!(o, "  CPU:\t\t{}", r.limit_nano_cpus as f64 / 1e9)?;
            }
            if r.limit_memory > 0 {
                writeln!(o, "  Memory:\t{}MiB", r.limit_memory >> 20)?;
            }
            if r.limit_pids > 0 {
                writeln!(o, "  Pids:\t\t{}", r.limit_pids)?;
            }
        }
        let networks: Vec<String> = s
            .endpoint
            .virtual_ips
            .iter()
            .map(|v| format!("{} (VIP {})", v.network, v.addr.split('/').next().unwrap_or(&v.addr)))
            .collect();
        if !networks.is_empty() {
            writeln!(o, "Networks:\t{}", networks.join(" "))?;
        }
        let e = &spec.endpoint;
        writeln!(o, "Endpoint Mode:\t{}", enum_text(&e.mode))?;
        writeln!(o, " DNS TTL:\t{}s", e.dns_ttl_secs)?;
        if e.mode == shoal_orch::EndpointMode::Vip {
            writeln!(o, " Load Balancing:\t{}", enum_text(&e.lb))?;
            if let Some(ms) = e.affinity_ms {
                writeln!(o, " Affinity:\tclient-ip, {}", ms_text(ms))?;
            }
        }
        if !spec.ports.is_empty() {
            writeln!(o, "Ports:")?;
            for p in &spec.ports {
                writeln!(
                    o,
                    " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                    p.published, p.protocol, p.target, p.mode
                )?;
                if p.proxy_protocol {
                    writeln!(o, "  ProxyProtocol = v2")?;
                }
                if p.local_only {
                    writeln!(o, "  TrafficPolicy = local")?;
                }
            }
        }
        for e in &s.endpoint.port_errors {
            writeln!(o, "Port Error:\t{}/{} on {}: {}", e.published_port, e.protocol, e.hostname, e.error)?;
        }
    }
    Ok(())
}

/// `service logs`.
pub fn logs(
    client: &Client,
    service: &str,
    follow: bool,
    tail: Option<usize>,
    timestamps: bool,
    no_ids: bool,
) -> anyhow::Result<()> {
    let mut after = 0u64;
    let mut first = true;
    loop {
        let lines = client.call("GET", &format!("/v1/services/{service}/logs?after_ms={after}"), None)?;
        let mut lines = lines.as_array().cloned().unwrap_or_default();
        if first && let Some(n) = tail {
            let skip = lines.len().saturating_sub(n);
            lines.drain(..skip);
        }
        first = false;
        let mut o = out();
        for l in &lines {
            let ts = l["ts_ms"].as_u64().unwrap_or(0);
            after = after.max(ts);
            let name = l["name"].as_str().unwrap_or("");
            let node = l["node"].as_str().unwrap_or("");
            let prefix = if no_ids {
                format!("{name}@{node}")
            } else {
                format!("{name}.{}@{node}", short(l["task"].as_str().unwrap_or("")))
            };
            let stamp =
                if timestamps { format!("{} ", shoal_agent::clock::rfc3339(ts)) } else { String::new() };
            writeln!(o, "{prefix}    | {stamp}{}", l["text"].as_str().unwrap_or(""))?;
        }
        drop(o);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_filters() {
        let f = PsFilter::parse(&["desired-state=accepted".into(), "node=node1".into()]).unwrap();
        assert!(f.admits("running", "node1", "web.1"));
        assert!(!f.admits("shutdown", "node1", "web.1"));
        assert!(!f.admits("running", "node2", "web.1"));
        assert!(PsFilter::parse(&["colour=red".into()]).unwrap_err().to_string().contains("invalid filter"));
    }
}
