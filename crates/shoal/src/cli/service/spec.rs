//! The flags of `service create` and `service update`, and how they change
//! a service spec. The spec is the orchestrator's own type; it crosses the
//! API in docker's shape (`shoal_agent::api::views::ServiceSpec`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use shoal_orch::{
    FailureAction, HealthCheck, Mode, Mount, MountKind, PortConfig, ServiceSpec, TaskSpec, UpdateConfig,
};

use crate::cli::flags::{self, Action, Condition, Order, RollbackAction, ServiceMode};

/// Options `service create` and `service update` share.
#[derive(Debug, Args)]
pub struct SpecOptions {
    /// Number of tasks
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Maximum number of tasks per node (0 = unlimited)
    #[arg(long)]
    replicas_max_per_node: Option<u64>,
    /// Working directory inside the task
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// Username or UID (format: <name|uid>[:<group|gid>])
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Task hostname
    #[arg(long)]
    hostname: Option<String>,
    /// Limit CPUs (such as 0.5)
    #[arg(long, value_parser = flags::cpus)]
    limit_cpu: Option<u64>,
    /// Limit memory (such as 64M)
    #[arg(long, value_parser = flags::bytes)]
    limit_memory: Option<u64>,
    /// Limit the number of processes (0 = unlimited)
    #[arg(long)]
    limit_pids: Option<u64>,
    /// Reserve CPUs
    #[arg(long, value_parser = flags::cpus)]
    reserve_cpu: Option<u64>,
    /// Reserve memory
    #[arg(long, value_parser = flags::bytes)]
    reserve_memory: Option<u64>,
    /// Restart when condition is met
    #[arg(long)]
    restart_condition: Option<Condition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    restart_delay: Option<u64>,
    /// Maximum number of restarts before giving up (0 = unlimited)
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    restart_window: Option<u64>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    update_delay: Option<u64>,
    /// Action on update failure
    #[arg(long)]
    update_failure_action: Option<Action>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    update_monitor: Option<u64>,
    /// Failure rate to tolerate during an update
    #[arg(long, value_parser = flags::ratio)]
    update_max_failure_ratio: Option<f64>,
    /// Update order
    #[arg(long)]
    update_order: Option<Order>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    rollback_delay: Option<u64>,
    /// Action on rollback failure
    #[arg(long)]
    rollback_failure_action: Option<RollbackAction>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    rollback_monitor: Option<u64>,
    /// Failure rate to tolerate during a rollback
    #[arg(long, value_parser = flags::ratio)]
    rollback_max_failure_ratio: Option<f64>,
    /// Rollback order
    #[arg(long)]
    rollback_order: Option<Order>,
    /// Command to run to check health (a shell command, run inside the task)
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    health_interval: Option<u64>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    health_timeout: Option<u64>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long)]
    health_retries: Option<u64>,
    /// Start period for the task to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    health_start_period: Option<u64>,
    /// Disable any healthcheck
    #[arg(long)]
    no_healthcheck: bool,
    /// Time to wait before force killing a task (ns|us|ms|s|m|h)
    #[arg(long, value_parser = flags::duration_ms)]
    stop_grace_period: Option<u64>,
    /// Signal to stop the task
    #[arg(long, value_parser = flags::signal)]
    stop_signal: Option<String>,
    /// Endpoint mode: one VIP balanced over the tasks, or DNS round-robin
    #[arg(long)]
    endpoint_mode: Option<flags::EndpointMode>,
    /// TTL of the service's DNS answers (such as 5s; Swarm's is a fixed 600s)
    #[arg(long, value_parser = flags::dns_ttl)]
    dns_ttl: Option<u32>,
    /// How the VIP balances new connections
    #[arg(long)]
    lb: Option<flags::Lb>,
    /// Keep a client on one task: none, client-ip or client-ip:TIMEOUT
    #[arg(long, value_parser = flags::affinity)]
    lb_affinity: Option<flags::Affinity>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Suppress progress output
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `service create`.
#[derive(Debug, Args)]
pub struct CreateOptions {
    /// Service name
    #[arg(long)]
    pub name: Option<String>,
    /// Service mode
    #[arg(long, default_value = "replicated")]
    pub mode: ServiceMode,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// Network attachments: NAME, or name=NAME[,alias=ALIAS...]
    #[arg(long = "network")]
    pub networks: Vec<String>,
    /// Placement constraints
    #[arg(long = "constraint")]
    pub constraints: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long = "placement-pref")]
    pub placement_prefs: Vec<String>,
    /// Publish a port as a node port (PUBLISHED:TARGET[/PROTO])
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Service labels
    #[arg(short = 'l', long = "label")]
    pub labels: Vec<String>,
    /// Attach a filesystem mount to the service (type=volume|bind|tmpfs,source=SRC,target=DST[,readonly])
    #[arg(long = "mount")]
    pub mounts: Vec<String>,
    #[command(flatten)]
    pub spec: SpecOptions,
    /// The program to run (looked up on each node's PATH) and its arguments; everything after
    /// the program is its own, as in docker (`redis-benchmark -h HOST -q`)
    #[arg(value_name = "IMAGE [ARG]...", required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `service update`.
#[derive(Debug, Args)]
pub struct UpdateOptions {
    /// Add or update an environment variable
    #[arg(long)]
    env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long)]
    env_rm: Vec<String>,
    /// Add or update a placement constraint
    #[arg(long)]
    constraint_add: Vec<String>,
    /// Remove a constraint
    #[arg(long)]
    constraint_rm: Vec<String>,
    /// Add a placement preference
    #[arg(long)]
    placement_pref_add: Vec<String>,
    /// Remove a placement preference
    #[arg(long)]
    placement_pref_rm: Vec<String>,
    /// Add or update a published port
    #[arg(long)]
    publish_add: Vec<String>,
    /// Remove a published port by its target port
    #[arg(long)]
    publish_rm: Vec<String>,
    /// Add or update a mount on a service
    #[arg(long)]
    mount_add: Vec<String>,
    /// Remove a mount by its target path
    #[arg(long)]
    mount_rm: Vec<String>,
    /// Service command args (a shell-like string)
    #[arg(long)]
    args: Option<String>,
    /// Program to run
    #[arg(long)]
    image: Option<String>,
    /// Force update even if no changes require it
    #[arg(long)]
    force: bool,
    /// Roll back to the previous specification
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub spec: SpecOptions,
    /// Service to update
    pub service: String,
}

fn invalid(value: &str, flag: &str, hint: &str) -> String {
    format!("invalid argument {value:?} for \"--{flag}\" flag: {hint}")
}

/// `-p [PUBLISHED:]TARGET[/udp]` (ranges too: `8000-8001:80-81`) or
/// `published=8080,target=80[,protocol=udp][,mode=host]`, parsed as
/// compose files' ports are.
pub fn parse_publish(text: &str) -> anyhow::Result<Vec<PortConfig>> {
    let parsed = if text.contains('=') {
        shoal_compose::ports::parse_long(text).map(|p| vec![p])
    } else {
        shoal_compose::ports::parse_short(text)
    };
    let ports = parsed.map_err(|problem| {
        let hint = format!(
            "{problem}; use [PUBLISHED:]TARGET[/PROTOCOL], such as 8080:80, or published=8080,target=80\
             [,protocol=udp][,mode=host][,proxy-protocol=v2][,traffic-policy=local]"
        );
        anyhow::anyhow!("{}", invalid(text, "publish", &hint))
    })?;
    Ok(ports
        .into_iter()
        .map(|p| PortConfig {
            name: p.name,
            published: p.published,
            target: p.target,
            protocol: p.protocol,
            mode: p.mode,
            proxy_protocol: p.proxy_protocol,
            local_only: p.local_only,
        })
        .collect())
}

/// `--network NAME` or docker's long form `name=NAME[,alias=ALIAS...]`:
/// the network and its aliases.
pub fn parse_network(text: &str) -> anyhow::Result<(String, Vec<String>)> {
    if !text.contains('=') {
        return Ok((text.to_owned(), Vec::new()));
    }
    let bad = |hint: &str| anyhow::anyhow!("{}", invalid(text, "network", hint));
    let mut name = None;
    let mut aliases = Vec::new();
    for field in text.split(',') {
        match field.split_once('=') {
            Some(("name" | "target", v)) if !v.is_empty() => name = Some(v.to_owned()),
            Some(("alias", v)) if !v.is_empty() => aliases.push(v.to_owned()),
            _ => return Err(bad("use NAME or name=NAME[,alias=ALIAS]")),
        }
    }
    Ok((name.ok_or_else(|| bad("name=NAME is missing"))?, aliases))
}

/// `--mount type=volume|bind|tmpfs,source=SRC,target=DST[,readonly]`, as
/// docker takes it; a relative bind source (`./conf`) is made absolute
/// against the working directory, as docker's CLI does.
pub fn parse_mount(text: &str) -> anyhow::Result<Mount> {
    let m = shoal_compose::mounts::parse_mount_flag(text)
        .map_err(|problem| anyhow::anyhow!("{}", invalid(text, "mount", &problem)))?;
    let kind = match m.kind {
        shoal_compose::mounts::MountKind::Volume => MountKind::Volume,
        shoal_compose::mounts::MountKind::Bind => MountKind::Bind,
        shoal_compose::mounts::MountKind::Tmpfs => MountKind::Tmpfs,
    };
    let mut source = m.source;
    if kind == MountKind::Bind && source.starts_with('.') {
        let cwd =
            std::env::current_dir().context("find the working directory for a relative --mount source")?;
        source = cwd.join(&source).display().to_string();
    }
    Ok(Mount { kind, source, target: m.target, readonly: m.readonly })
}

/// Adds `mount`, replacing one with the same target, as docker's
/// `--mount-add` does.
fn set_mount(mounts: &mut Vec<Mount>, mount: Mount) {
    mounts.retain(|m| m.target != mount.target);
    mounts.push(mount);
}

/// `spread=node.labels.KEY`: the label key.
pub fn parse_pref(text: &str) -> anyhow::Result<String> {
    text.strip_prefix("spread=node.labels.")
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{}", invalid(text, "placement-pref", "use spread=node.labels.KEY")))
}

/// Checks a `KEY=VALUE`.
pub fn check_env(kv: &str) -> anyhow::Result<()> {
    if kv.split('=').next().is_none_or(str::is_empty) {
        bail!("{}", invalid(kv, "env", "use KEY=VALUE"));
    }
    Ok(())
}

/// Reads an env file: `KEY=VALUE` lines, or `KEY` alone to take this
/// shell's value; `#` comments.
pub fn read_env_file(path: &PathBuf) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("open env file {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if line.contains('=') {
            check_env(line)?;
            out.push(line.to_owned());
        } else if let Ok(v) = std::env::var(line) {
            out.push(format!("{line}={v}"));
        }
    }
    Ok(out)
}

/// Sets `env` entries, replacing ones with the same key.
pub fn set_env(env: &mut Vec<String>, kv: &str) {
    let key = kv.split('=').next().unwrap_or_default();
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(kv.to_owned());
}

/// Splits a shell-like string into words (quotes group, backslash escapes),
/// as a compose file's `command:` string is split.
pub fn split_args(text: &str) -> anyhow::Result<Vec<String>> {
    shoal_compose::split_words(text).map_err(|problem| anyhow::anyhow!("{}", invalid(text, "args", &problem)))
}

/// A random name as docker gives unnamed services (adjective_noun).
fn random_name() -> String {
    const ADJECTIVES: [&str; 8] = ["brave", "calm", "eager", "fond", "keen", "lucid", "quiet", "swift"];
    const NOUNS: [&str; 8] = ["cod", "eel", "hake", "ling", "perch", "pike", "shad", "sole"];
    let n = shoal_agent::clock::now_ms() as usize;
    format!("{}_{}", ADJECTIVES[n % 8], NOUNS[(n / 8) % 8])
}

/// Applies the shared options to `spec`.
pub fn apply(spec: &mut ServiceSpec, o: &SpecOptions) -> anyhow::Result<()> {
    if let Some(r) = o.replicas {
        match &mut spec.mode {
            Mode::Replicated { replicas } => *replicas = r,
            Mode::Global => bail!("replicas can only be used with replicated mode"),
        }
    }
    let t = &mut spec.task;
    let set = |target: &mut Option<String>, v: &Option<String>| {
        if let Some(v) = v {
            *target = (!v.is_empty()).then(|| v.clone());
        }
    };
    set(&mut t.workdir, &o.workdir);
    set(&mut t.user, &o.user);
    set(&mut t.hostname, &o.hostname);
    macro_rules! copy {
        ($($field:expr => $value:expr),* $(,)?) => { $( if let Some(v) = $value { $field = v.into(); } )* };
    }
    copy! {
        t.placement.max_replicas => o.replicas_max_per_node,
        t.resources.limit_nano_cpus => o.limit_cpu,
        t.resources.limit_memory => o.limit_memory,
        t.resources.limit_pids => o.limit_pids,
        t.resources.reserve_nano_cpus => o.reserve_cpu,
        t.resources.reserve_memory => o.reserve_memory,
        t.restart.condition => o.restart_condition,
        t.restart.delay_ms => o.restart_delay,
        t.restart.max_attempts => o.restart_max_attempts,
        t.restart.window_ms => o.restart_window,
        t.stop_grace_ms => o.stop_grace_period,
        t.stop_signal => o.stop_signal.clone(),
        spec.update.parallelism => o.update_parallelism,
        spec.update.delay_ms => o.update_delay,
        spec.update.failure_action => o.update_failure_action,
        spec.update.monitor_ms => o.update_monitor,
        spec.update.max_failure_ratio => o.update_max_failure_ratio,
        spec.update.order => o.update_order,
        spec.rollback.parallelism => o.rollback_parallelism,
        spec.rollback.delay_ms => o.rollback_delay,
        spec.rollback.failure_action => o.rollback_failure_action.map(FailureAction::from),
        spec.rollback.monitor_ms => o.rollback_monitor,
        spec.rollback.max_failure_ratio => o.rollback_max_failure_ratio,
        spec.rollback.order => o.rollback_order,
    }
    copy! {
        spec.endpoint.mode => o.endpoint_mode,
        spec.endpoint.dns_ttl_secs => o.dns_ttl,
        spec.endpoint.lb => o.lb,
        spec.endpoint.affinity_ms => o.lb_affinity,
    }
    if o.no_healthcheck {
        if o.health_cmd.is_some() {
            bail!("--no-healthcheck conflicts with --health-* options");
        }
        t.health = None;
    } else if o.health_cmd.is_some() || t.health.is_some() {
        let mut h = t.health.clone().unwrap_or(HealthCheck {
            cmd: String::new(),
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        });
        copy! {
            h.cmd => o.health_cmd.clone(),
            h.interval_ms => o.health_interval,
            h.timeout_ms => o.health_timeout,
            h.retries => o.health_retries,
            h.start_period_ms => o.health_start_period,
        }
        t.health = Some(h);
    } else if o.health_interval.is_some() || o.health_retries.is_some() || o.health_timeout.is_some() {
        bail!("--health-interval, --health-timeout and --health-retries need --health-cmd");
    }
    Ok(())
}

/// The spec `service create` asks for.
pub fn create_spec(o: &CreateOptions) -> anyhow::Result<ServiceSpec> {
    let (image, args) = o.command.split_first().context("service create needs the program to run")?;
    let mut spec = ServiceSpec {
        name: o.name.clone().unwrap_or_else(random_name),
        mode: Mode::Replicated { replicas: 1 },
        labels: Default::default(),
        task: TaskSpec { image: image.clone(), args: args.to_vec(), ..TaskSpec::default() },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        ports: Vec::new(),
        endpoint: Default::default(),
        depends_on: Vec::new(),
    };
    if o.mode == ServiceMode::Global {
        if o.spec.replicas.is_some() {
            bail!("replicas can only be used with replicated mode");
        }
        spec.mode = Mode::Global;
    }
    for path in &o.env_file {
        for kv in read_env_file(path)? {
            set_env(&mut spec.task.env, &kv);
        }
    }
    for kv in &o.env {
        check_env(kv)?;
        set_env(&mut spec.task.env, kv);
    }
    for text in &o.networks {
        let (network, aliases) = parse_network(text)?;
        if !aliases.is_empty() {
            spec.task.aliases.insert(network.clone(), aliases);
        }
        spec.task.networks.push(network);
    }
    spec.task.placement.constraints = o.constraints.clone();
    spec.task.placement.spread = o.placement_prefs.iter().map(|p| parse_pref(p)).collect::<Result<_, _>>()?;
    spec.ports = o.publish.iter().map(|p| parse_publish(p)).collect::<Result<Vec<_>, _>>()?.concat();
    spec.labels.extend(crate::cli::parse_labels(&o.labels));
    for text in &o.mounts {
        set_mount(&mut spec.task.mounts, parse_mount(text)?);
    }
    apply(&mut spec, &o.spec)?;
    Ok(spec)
}

/// Applies `service update`'s flags to the current spec.
pub fn update_spec(spec: &mut ServiceSpec, o: &UpdateOptions) -> anyhow::Result<()> {
    let t = &mut spec.task;
    for key in &o.env_rm {
        t.env.retain(|e| e.split('=').next() != Some(key.as_str()));
    }
    for kv in &o.env_add {
        check_env(kv)?;
        set_env(&mut t.env, kv);
    }
    t.placement.constraints.retain(|c| !o.constraint_rm.contains(c));
    for c in &o.constraint_add {
        if !t.placement.constraints.contains(c) {
            t.placement.constraints.push(c.clone());
        }
    }
    for p in &o.placement_pref_rm {
        let key = parse_pref(p)?;
        t.placement.spread.retain(|k| *k != key);
    }
    for p in &o.placement_pref_add {
        t.placement.spread.push(parse_pref(p)?);
    }
    for target in &o.mount_rm {
        t.mounts.retain(|m| m.target != *target);
    }
    for text in &o.mount_add {
        set_mount(&mut t.mounts, parse_mount(text)?);
    }
    if let Some(args) = &o.args {
        t.args = split_args(args)?;
    }
    if let Some(image) = &o.image {
        t.image = image.clone();
    }
    if o.force {
        t.force_update += 1;
    }
    for p in &o.publish_rm {
        let target: u16 =
            p.split('/').next().unwrap_or(p).split(':').next_back().unwrap_or(p).parse().map_err(|_| {
                anyhow::anyhow!("{}", invalid(p, "publish-rm", "use the target port, such as 80 or 80/tcp"))
            })?;
        // As docker: by target port and protocol (tcp unless given).
        let protocol = p.split_once('/').map_or("tcp", |(_, proto)| proto);
        spec.ports.retain(|port| port.target != target || port.protocol != protocol);
    }
    for p in &o.publish_add {
        for port in parse_publish(p)? {
            spec.ports.retain(|q| q.published != port.published || q.protocol != port.protocol);
            spec.ports.push(port);
        }
    }
    apply(spec, &o.spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Create {
        #[command(flatten)]
        o: CreateOptions,
    }

    #[test]
    fn everything_after_the_program_is_its_own() {
        let c = Create::try_parse_from([
            "create",
            "--name",
            "b",
            "redis-benchmark",
            "-h",
            "10.0.0.3",
            "-q",
            "--replicas",
            "2",
        ])
        .unwrap();
        assert_eq!(c.o.command, ["redis-benchmark", "-h", "10.0.0.3", "-q", "--replicas", "2"]);
        assert_eq!(c.o.name.as_deref(), Some("b"));
        assert!(!c.o.spec.quiet && c.o.spec.replicas.is_none(), "shoal's flags stop at the program");
        let c = Create::try_parse_from(["create", "-q", "--replicas", "3", "python3", "-m", "http.server"])
            .unwrap();
        assert!(c.o.spec.quiet);
        assert_eq!(c.o.spec.replicas, Some(3));
        let spec = create_spec(&c.o).unwrap();
        assert_eq!(
            (spec.task.image.as_str(), spec.task.args.as_slice()),
            ("python3", &["-m".to_owned(), "http.server".to_owned()][..])
        );
        assert!(Create::try_parse_from(["create", "--name", "x"]).is_err(), "the program is required");
    }

    #[test]
    fn enum_flags_name_their_values() {
        let err = Create::try_parse_from(["create", "--restart-condition", "sometimes", "sleep", "1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[possible values: none, on-failure, any]"), "{err}");
        let c = Create::try_parse_from([
            "create",
            "--update-order",
            "start-first",
            "--mode",
            "global",
            "sleep",
            "1",
        ])
        .unwrap();
        let spec = create_spec(&c.o).unwrap();
        assert_eq!((spec.mode, spec.update.order), (Mode::Global, shoal_orch::UpdateOrder::StartFirst));
    }

    #[test]
    fn networks_with_aliases_and_balancing() {
        assert_eq!(parse_network("front").unwrap(), ("front".to_owned(), vec![]));
        assert_eq!(
            parse_network("name=front,alias=db,alias=cache").unwrap(),
            ("front".to_owned(), vec!["db".to_owned(), "cache".to_owned()])
        );
        assert!(parse_network("alias=db").unwrap_err().to_string().contains("name=NAME is missing"));
        let c = Create::try_parse_from([
            "create",
            "--network",
            "name=front,alias=db",
            "--endpoint-mode",
            "dnsrr",
            "--dns-ttl",
            "30s",
            "--lb",
            "maglev",
            "--lb-affinity",
            "client-ip:1m",
            "redis-server",
        ])
        .unwrap();
        let spec = create_spec(&c.o).unwrap();
        assert_eq!(spec.task.networks, ["front"]);
        assert_eq!(spec.task.aliases["front"], ["db"]);
        assert_eq!(spec.endpoint.mode, shoal_orch::EndpointMode::Dnsrr);
        assert_eq!(
            (spec.endpoint.dns_ttl_secs, spec.endpoint.lb, spec.endpoint.affinity_ms),
            (30, shoal_orch::LbPolicy::Maglev, Some(60_000))
        );
    }

    #[test]
    fn publish_and_prefs() {
        let p = parse_publish("8080:80").unwrap().remove(0);
        assert_eq!(
            (p.published, p.target, p.protocol.as_str(), p.mode.as_str()),
            (8080, 80, "tcp", "ingress")
        );
        let p = parse_publish("published=53,target=5353,protocol=udp,mode=host").unwrap().remove(0);
        assert_eq!((p.published, p.target, p.protocol.as_str(), p.mode.as_str()), (53, 5353, "udp", "host"));
        let p = parse_publish("8080").unwrap().remove(0);
        assert_eq!((p.published, p.target), (0, 8080), "the manager picks the published port");
        assert!(parse_publish("8080:http").unwrap_err().to_string().contains("use [PUBLISHED:]TARGET"));
        let p = parse_publish("published=8000,target=80,proxy-protocol=v2,traffic-policy=local")
            .unwrap()
            .remove(0);
        assert_eq!(parse_publish("8000-8001:80-81").unwrap().len(), 2);
        assert!(p.proxy_protocol && p.local_only);
        assert!(parse_publish("published=1,target=2,proxy-protocol=v1").is_err());
        assert!(parse_publish("8080:80/sctp").is_err());
        assert_eq!(parse_pref("spread=node.labels.zone").unwrap(), "zone");
        assert!(parse_pref("spread=node.role").is_err());
    }

    #[test]
    fn mounts_are_created_updated_and_removed_by_target() {
        let c = Create::try_parse_from([
            "create",
            "--mount",
            "type=volume,source=data,target=/data",
            "--mount",
            "type=tmpfs,dst=/scratch,ro",
            "--mount",
            "type=bind,src=./conf,dst=/etc/app",
            "redis-server",
        ])
        .unwrap();
        let mut spec = create_spec(&c.o).unwrap();
        let m = &spec.task.mounts;
        assert_eq!(m.len(), 3);
        assert_eq!(
            (m[0].kind, m[0].source.as_str(), m[0].target.as_str()),
            (MountKind::Volume, "data", "/data")
        );
        assert!(m[1].kind == MountKind::Tmpfs && m[1].readonly);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            m[2].source,
            cwd.join("./conf").display().to_string(),
            "relative to the working directory"
        );
        let err = parse_mount("type=volume,source=data").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid argument \"type=volume,source=data\" for \"--mount\" flag: target is required"
        );

        #[derive(Debug, Parser)]
        struct Update {
            #[command(flatten)]
            o: UpdateOptions,
        }
        let u = Update::try_parse_from([
            "update",
            "--mount-rm",
            "/scratch",
            "--mount-add",
            "type=volume,source=other,target=/data,readonly",
            "web",
        ])
        .unwrap();
        update_spec(&mut spec, &u.o).unwrap();
        let targets: Vec<(&str, &str, bool)> =
            spec.task.mounts.iter().map(|m| (m.target.as_str(), m.source.as_str(), m.readonly)).collect();
        assert_eq!(targets[0].0, "/etc/app");
        assert_eq!(targets[1], ("/data", "other", true), "the same target is replaced");
        assert_eq!(targets.len(), 2);
    }

    #[test]
    fn args_split_like_a_shell() {
        assert_eq!(
            split_args(r#"-m http.server "8 0" 'a b' c\ d"#).unwrap(),
            ["-m", "http.server", "8 0", "a b", "c d"]
        );
        assert!(split_args("'open").is_err());
    }

    #[test]
    fn env_files_and_env_updates() {
        let path = std::env::temp_dir().join(format!("shoal-env-{}", std::process::id()));
        std::fs::write(&path, "# comment\n\nA=1\nB=two words\n").unwrap();
        let read = read_env_file(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(read.unwrap(), ["A=1", "B=two words"]);
        std::fs::write(&path, "=oops\n").unwrap();
        let err = read_env_file(&path).unwrap_err().to_string();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("use KEY=VALUE"), "{err}");
        let mut env = vec!["A=1".to_owned(), "B=2".to_owned()];
        set_env(&mut env, "A=3");
        assert_eq!(env, ["B=2", "A=3"]);
    }
}
