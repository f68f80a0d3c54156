//! `shoal service ...` and `shoal task exec`: the verbs, flags and output
//! Swarm users know, over the local API.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use shoal_orch::{
    FailureAction, HealthCheck, Mode, PortConfig, RestartCondition, ServiceSpec, TaskSpec, UpdateConfig,
    UpdateOrder,
};

use crate::client::Client;

/// Options `service create` and `service update` share.
#[derive(Debug, Args)]
pub struct SpecOptions {
    /// Number of tasks
    #[arg(long)]
    replicas: Option<u64>,
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
    #[arg(long, value_parser = parse_cpus)]
    limit_cpu: Option<u64>,
    /// Limit memory (such as 64M)
    #[arg(long, value_parser = parse_bytes)]
    limit_memory: Option<u64>,
    /// Limit the number of processes (0 = unlimited)
    #[arg(long)]
    limit_pids: Option<u64>,
    /// Reserve CPUs
    #[arg(long, value_parser = parse_cpus)]
    reserve_cpu: Option<u64>,
    /// Reserve memory
    #[arg(long, value_parser = parse_bytes)]
    reserve_memory: Option<u64>,
    /// Restart when condition is met ("none", "on-failure", "any")
    #[arg(long, value_parser = parse_condition)]
    restart_condition: Option<RestartCondition>,
    /// Delay between restart attempts (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    restart_delay: Option<u64>,
    /// Maximum number of restarts before giving up (0 = unlimited)
    #[arg(long)]
    restart_max_attempts: Option<u64>,
    /// Window used to evaluate the restart policy (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    restart_window: Option<u64>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once)
    #[arg(long)]
    update_parallelism: Option<u64>,
    /// Delay between updates (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    update_delay: Option<u64>,
    /// Action on update failure ("pause", "continue", "rollback")
    #[arg(long, value_parser = parse_action)]
    update_failure_action: Option<FailureAction>,
    /// Duration after each task update to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    update_monitor: Option<u64>,
    /// Failure rate to tolerate during an update
    #[arg(long, value_parser = parse_ratio)]
    update_max_failure_ratio: Option<f64>,
    /// Update order ("start-first", "stop-first")
    #[arg(long, value_parser = parse_order)]
    update_order: Option<UpdateOrder>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once)
    #[arg(long)]
    rollback_parallelism: Option<u64>,
    /// Delay between task rollbacks (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    rollback_delay: Option<u64>,
    /// Action on rollback failure ("pause", "continue")
    #[arg(long, value_parser = parse_action)]
    rollback_failure_action: Option<FailureAction>,
    /// Duration after each task rollback to monitor for failure (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    rollback_monitor: Option<u64>,
    /// Failure rate to tolerate during a rollback
    #[arg(long, value_parser = parse_ratio)]
    rollback_max_failure_ratio: Option<f64>,
    /// Rollback order ("start-first", "stop-first")
    #[arg(long, value_parser = parse_order)]
    rollback_order: Option<UpdateOrder>,
    /// Command to run to check health (a shell command, run inside the task)
    #[arg(long)]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    health_interval: Option<u64>,
    /// Maximum time to allow one check to run (ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    health_timeout: Option<u64>,
    /// Consecutive failures needed to report unhealthy
    #[arg(long)]
    health_retries: Option<u64>,
    /// Start period for the task to initialize before counting retries towards unstable (ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    health_start_period: Option<u64>,
    /// Disable any healthcheck
    #[arg(long)]
    no_healthcheck: bool,
    /// Time to wait before force killing a task (ns|us|ms|s|m|h)
    #[arg(long, value_parser = parse_ms)]
    stop_grace_period: Option<u64>,
    /// Signal to stop the task
    #[arg(long, value_parser = parse_signal)]
    stop_signal: Option<String>,
    /// Exit immediately instead of waiting for the service to converge
    #[arg(short = 'd', long)]
    detach: bool,
    /// Suppress progress output
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// `service create`.
#[derive(Debug, Args)]
pub struct CreateOptions {
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Service mode ("replicated" or "global")
    #[arg(long, default_value = "replicated", value_parser = ["replicated", "global"])]
    mode: String,
    /// Set environment variables
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Read in a file of environment variables
    #[arg(long)]
    env_file: Vec<PathBuf>,
    /// Network attachments
    #[arg(long = "network")]
    networks: Vec<String>,
    /// Placement constraints
    #[arg(long = "constraint")]
    constraints: Vec<String>,
    /// Add a placement preference (spread=node.labels.KEY)
    #[arg(long = "placement-pref")]
    placement_prefs: Vec<String>,
    /// Publish a port as a node port (PUBLISHED:TARGET[/PROTO])
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Service labels
    #[arg(short = 'l', long = "label")]
    labels: Vec<String>,
    #[command(flatten)]
    spec: SpecOptions,
    /// Program to run (looked up on each node's PATH)
    image: String,
    /// Its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
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
    rollback: bool,
    #[command(flatten)]
    spec: SpecOptions,
    /// Service to update
    service: String,
}

/// `shoal service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service
    Create(Box<CreateOptions>),
    /// List services
    Ls {
        /// Only display IDs
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, or json (one object per line)
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// List the tasks of one or more services
    Ps {
        /// Do not truncate output
        #[arg(long)]
        no_trunc: bool,
        /// Filter output (desired-state=running|shutdown|accepted, name=..., node=...)
        #[arg(short, long)]
        filter: Vec<String>,
        /// Only display task IDs
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, or json (one object per line)
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Services
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on one or more services
    Inspect {
        /// Print the information in a human friendly format
        #[arg(long)]
        pretty: bool,
        /// Services
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Scale one or multiple replicated services (SERVICE=REPLICAS)
    Scale {
        /// Exit immediately instead of waiting for the services to converge
        #[arg(short, long)]
        detach: bool,
        /// SERVICE=REPLICAS pairs
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// Update a service
    Update(Box<UpdateOptions>),
    /// Revert changes to a service's configuration
    Rollback {
        /// Exit immediately instead of waiting for the service to converge
        #[arg(short, long)]
        detach: bool,
        /// Suppress progress output
        #[arg(short, long)]
        quiet: bool,
        /// Service
        service: String,
    },
    /// Fetch the logs of a service or task
    Logs {
        /// Follow log output
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs
        #[arg(short = 'n', long)]
        tail: Option<usize>,
        /// Show timestamps
        #[arg(short, long)]
        timestamps: bool,
        /// Do not include task IDs in output
        #[arg(long)]
        no_task_ids: bool,
        /// Service or task
        service: String,
    },
    /// Remove one or more services
    Rm {
        /// Services
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `shoal task`.
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Run a command inside a running task of this node
    Exec {
        /// Working directory inside the task
        #[arg(short, long)]
        workdir: Option<String>,
        /// Set environment variables
        #[arg(short, long)]
        env: Vec<String>,
        /// Task id (or a unique prefix)
        task: String,
        /// Command and arguments
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Display detailed information on a task
    Inspect {
        /// Task id (or a unique prefix)
        task: String,
    },
}

fn invalid(value: &str, flag: &str, hint: &str) -> String {
    format!("invalid argument {value:?} for \"--{flag}\" flag: {hint}")
}

/// A Go-style duration (`300ms`, `5s`, `1m30s`, `2h`) in milliseconds.
fn parse_ms(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: use a number with a unit (ns, us, ms, s, m, h), such as 500ms or 1m30s"
        )
    };
    if text == "0" {
        return Ok(0);
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
    Ok(total.round() as u64)
}

/// A size such as `64M`, `1g`, `512k` or `1048576`, in bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
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

/// CPUs such as `0.5` in nano-CPUs.
fn parse_cpus(text: &str) -> Result<u64, String> {
    let n: f64 =
        text.parse().map_err(|_| format!("invalid number of CPUs {text:?}: use a number such as 0.5"))?;
    if !(0.0..=1024.0).contains(&n) {
        return Err(format!("invalid number of CPUs {text:?}: use a number such as 0.5"));
    }
    Ok((n * 1e9) as u64)
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid failure ratio {text:?}: use a number between 0 and 1")),
    }
}

fn parse_condition(text: &str) -> Result<RestartCondition, String> {
    match text {
        "none" => Ok(RestartCondition::None),
        "on-failure" => Ok(RestartCondition::OnFailure),
        "any" => Ok(RestartCondition::Any),
        _ => Err("must be one of \"none\", \"on-failure\" or \"any\"".into()),
    }
}

fn parse_action(text: &str) -> Result<FailureAction, String> {
    match text {
        "pause" => Ok(FailureAction::Pause),
        "continue" => Ok(FailureAction::Continue),
        "rollback" => Ok(FailureAction::Rollback),
        _ => Err("must be one of \"pause\", \"continue\" or \"rollback\"".into()),
    }
}

fn parse_order(text: &str) -> Result<UpdateOrder, String> {
    match text {
        "stop-first" => Ok(UpdateOrder::StopFirst),
        "start-first" => Ok(UpdateOrder::StartFirst),
        _ => Err("must be one of \"stop-first\" or \"start-first\"".into()),
    }
}

fn parse_signal(text: &str) -> Result<String, String> {
    if shoal_runtime::exec::signal(text).is_some() {
        Ok(text.to_owned())
    } else {
        Err(format!("invalid signal {text:?}: use a name such as SIGTERM or SIGQUIT, or a number"))
    }
}

/// `-p 8080:80[/udp]` or `published=8080,target=80[,protocol=udp][,mode=host]`.
fn parse_publish(text: &str) -> anyhow::Result<PortConfig> {
    let bad = || {
        anyhow::anyhow!("{}", invalid(text, "publish", "use PUBLISHED:TARGET[/PROTOCOL], such as 8080:80"))
    };
    let mut port = PortConfig { published: 0, target: 0, protocol: "tcp".into(), mode: "ingress".into() };
    if text.contains('=') {
        for field in text.split(',') {
            let (k, v) = field.split_once('=').ok_or_else(bad)?;
            match k {
                "published" => port.published = v.parse().map_err(|_| bad())?,
                "target" => port.target = v.parse().map_err(|_| bad())?,
                "protocol" => port.protocol = v.to_owned(),
                "mode" => port.mode = v.to_owned(),
                _ => return Err(bad()),
            }
        }
    } else {
        let (ports, proto) = text.split_once('/').unwrap_or((text, "tcp"));
        let (published, target) = ports.split_once(':').ok_or_else(bad)?;
        port.published = published.parse().map_err(|_| bad())?;
        port.target = target.parse().map_err(|_| bad())?;
        port.protocol = proto.to_owned();
    }
    if port.target == 0
        || !["tcp", "udp"].contains(&port.protocol.as_str())
        || !["ingress", "host"].contains(&port.mode.as_str())
    {
        return Err(bad());
    }
    Ok(port)
}

fn parse_pref(text: &str) -> anyhow::Result<String> {
    text.strip_prefix("spread=node.labels.")
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{}", invalid(text, "placement-pref", "use spread=node.labels.KEY")))
}

fn check_env(kv: &str) -> anyhow::Result<()> {
    if kv.split('=').next().is_none_or(str::is_empty) {
        bail!("{}", invalid(kv, "env", "use KEY=VALUE"));
    }
    Ok(())
}

fn read_env_file(path: &PathBuf) -> anyhow::Result<Vec<String>> {
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
fn set_env(env: &mut Vec<String>, kv: &str) {
    let key = kv.split('=').next().unwrap_or_default();
    env.retain(|e| e.split('=').next() != Some(key));
    env.push(kv.to_owned());
}

/// Applies the shared options to `spec`.
fn apply(spec: &mut ServiceSpec, o: &SpecOptions) -> anyhow::Result<()> {
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
        ($($field:expr => $value:expr),* $(,)?) => { $( if let Some(v) = $value { $field = v; } )* };
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
        spec.rollback.monitor_ms => o.rollback_monitor,
        spec.rollback.max_failure_ratio => o.rollback_max_failure_ratio,
        spec.rollback.order => o.rollback_order,
    }
    if let Some(action) = o.rollback_failure_action {
        if action == FailureAction::Rollback {
            bail!(
                "{}",
                invalid("rollback", "rollback-failure-action", "must be one of \"pause\" or \"continue\"")
            );
        }
        spec.rollback.failure_action = action;
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

fn default_spec(name: String, image: String) -> ServiceSpec {
    ServiceSpec {
        name,
        mode: Mode::Replicated { replicas: 1 },
        labels: Default::default(),
        task: TaskSpec { image, ..TaskSpec::default() },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        ports: Vec::new(),
    }
}

/// A random name as docker gives unnamed services (adjective_noun).
fn random_name() -> String {
    const ADJECTIVES: [&str; 8] = ["brave", "calm", "eager", "fond", "keen", "lucid", "quiet", "swift"];
    const NOUNS: [&str; 8] = ["cod", "eel", "hake", "ling", "perch", "pike", "shad", "sole"];
    let n =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}_{}", ADJECTIVES[n as usize % 8], NOUNS[(n as usize / 8) % 8])
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Runs a `service` verb.
pub fn service(client: &Client, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Create(o) => create(client, *o),
        ServiceCommand::Ls { quiet, format } => ls(client, quiet, format == "json"),
        ServiceCommand::Ps { no_trunc, filter, quiet, format, services } => {
            for (i, s) in services.iter().enumerate() {
                if i > 0 && !quiet && format != "json" {
                    writeln!(out())?;
                }
                ps(client, s, no_trunc, &filter, quiet, format == "json")?;
            }
            Ok(())
        }
        ServiceCommand::Inspect { pretty, services } => inspect(client, &services, pretty),
        ServiceCommand::Scale { detach, scales } => scale(client, &scales, detach),
        ServiceCommand::Update(o) => update(client, *o),
        ServiceCommand::Rollback { detach, quiet, service } => {
            let answer = client.call("POST", &format!("/v1/services/{service}/rollback"), None)?;
            writeln!(out(), "{service}")?;
            let id = answer["id"].as_str().unwrap_or(&service).to_owned();
            if !detach {
                writeln!(out(), "rollback: manually requested rollback")?;
                converge(client, &id, quiet)?;
            }
            Ok(())
        }
        ServiceCommand::Logs { follow, tail, timestamps, no_task_ids, service } => {
            logs(client, &service, follow, tail, timestamps, no_task_ids)
        }
        ServiceCommand::Rm { services } => {
            let mut failed = false;
            for s in &services {
                match client.call("DELETE", &format!("/v1/services/{s}"), None) {
                    Ok(_) => writeln!(out(), "{s}")?,
                    Err(e) => {
                        failed = true;
                        #[allow(clippy::print_stderr)]
                        {
                            eprintln!("{e:#}");
                        }
                    }
                }
            }
            if failed {
                bail!("some services could not be removed");
            }
            Ok(())
        }
    }
}

fn create(client: &Client, o: CreateOptions) -> anyhow::Result<()> {
    let name = o.name.clone().unwrap_or_else(random_name);
    let mut spec = default_spec(name, o.image.clone());
    if o.mode == "global" {
        if o.spec.replicas.is_some() {
            bail!("replicas can only be used with replicated mode");
        }
        spec.mode = Mode::Global;
    }
    spec.task.args = o.args.clone();
    for path in &o.env_file {
        for kv in read_env_file(path)? {
            set_env(&mut spec.task.env, &kv);
        }
    }
    for kv in &o.env {
        check_env(kv)?;
        set_env(&mut spec.task.env, kv);
    }
    spec.task.networks = o.networks.clone();
    spec.task.placement.constraints = o.constraints.clone();
    spec.task.placement.spread = o.placement_prefs.iter().map(|p| parse_pref(p)).collect::<Result<_, _>>()?;
    spec.ports = o.publish.iter().map(|p| parse_publish(p)).collect::<Result<_, _>>()?;
    for l in &o.labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        spec.labels.insert(k.to_owned(), v.to_owned());
    }
    apply(&mut spec, &o.spec)?;
    let answer = client.call("POST", "/v1/services", Some(&serde_json::to_value(&spec)?))?;
    let id = answer["id"].as_str().unwrap_or_default().to_owned();
    writeln!(out(), "{id}")?;
    if !o.spec.detach {
        converge(client, &id, o.spec.quiet)?;
    }
    Ok(())
}

fn get_service(client: &Client, name: &str) -> anyhow::Result<(u64, ServiceSpec, Value)> {
    let value = client.call("GET", &format!("/v1/services/{name}"), None)?;
    let spec: ServiceSpec =
        serde_json::from_value(value["spec"].clone()).context("the manager sent a bad spec")?;
    Ok((value["version"].as_u64().unwrap_or(0), spec, value))
}

fn put_spec(client: &Client, id: &str, version: u64, spec: &ServiceSpec) -> anyhow::Result<()> {
    let body = serde_json::json!({ "version": version, "spec": spec });
    client.call("POST", &format!("/v1/services/{id}/update"), Some(&body))?;
    Ok(())
}

fn update(client: &Client, o: UpdateOptions) -> anyhow::Result<()> {
    let (version, mut spec, value) = get_service(client, &o.service)?;
    let id = value["id"].as_str().unwrap_or_default().to_owned();
    if o.rollback {
        client.call("POST", &format!("/v1/services/{id}/rollback"), None)?;
        writeln!(out(), "{}", o.service)?;
        if !o.spec.detach {
            writeln!(out(), "rollback: manually requested rollback")?;
            converge(client, &id, o.spec.quiet)?;
        }
        return Ok(());
    }
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
        spec.ports.retain(|port| port.target != target);
    }
    for p in &o.publish_add {
        let port = parse_publish(p)?;
        spec.ports.retain(|q| q.published != port.published || q.protocol != port.protocol);
        spec.ports.push(port);
    }
    apply(&mut spec, &o.spec)?;
    put_spec(client, &id, version, &spec)?;
    writeln!(out(), "{}", o.service)?;
    if !o.spec.detach {
        converge(client, &id, o.spec.quiet)?;
    }
    Ok(())
}

/// Splits a shell-like string into words (quotes group, backslash escapes).
fn split_args(text: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("{}", invalid(text, "args", "unterminated quote"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn scale(client: &Client, scales: &[String], detach: bool) -> anyhow::Result<()> {
    let mut pairs = Vec::new();
    for s in scales {
        let parsed = s.split_once('=').and_then(|(n, r)| Some((n.to_owned(), r.parse::<u64>().ok()?)));
        match parsed {
            Some(p) => pairs.push(p),
            None => bail!("invalid scale specifier {s:?}: use SERVICE=REPLICAS, such as web=5"),
        }
    }
    let mut ids = Vec::new();
    for (name, replicas) in pairs {
        let (version, mut spec, value) = get_service(client, &name)?;
        if spec.mode == Mode::Global {
            bail!("{name}: scale can only be used with replicated mode");
        }
        spec.mode = Mode::Replicated { replicas };
        let id = value["id"].as_str().unwrap_or_default().to_owned();
        put_spec(client, &id, version, &spec)?;
        writeln!(out(), "{name} scaled to {replicas}")?;
        ids.push(id);
    }
    if !detach {
        for id in ids {
            converge(client, &id, false)?;
        }
    }
    Ok(())
}

const STEPS: [&str; 8] =
    ["new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"];

fn step(state: &str) -> u64 {
    STEPS.iter().position(|s| *s == state).unwrap_or(0) as u64
}

/// Where one slot (or global node) stands: its newest current task.
struct SlotView {
    id: String,
    label: String,
    state: String,
    err: Option<String>,
}

/// Waits until the service converges, showing docker's progress view; says
/// why and fails if it cannot.
fn converge(client: &Client, id: &str, quiet: bool) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal() && !quiet;
    let multi = indicatif::MultiProgress::new();
    let overall = multi.add(indicatif::ProgressBar::new_spinner());
    let mut bars: std::collections::BTreeMap<String, indicatif::ProgressBar> = Default::default();
    let style = indicatif::ProgressStyle::with_template("{prefix}: {msg:<10} [{bar:50}]")
        .expect("valid template")
        .progress_chars("=> ");
    let started = Instant::now();
    let mut last_line = String::new();
    let mut stuck_since: Option<Instant> = None;
    let mut stable: Option<(Instant, Vec<String>)> = None;
    let mut announced = false;
    let limit = Duration::from_secs(180);
    loop {
        let answer = client.call("GET", &format!("/v1/services/{id}/tasks"), None)?;
        let service = &answer["service"];
        let tasks = answer["tasks"].as_array().cloned().unwrap_or_default();
        let global = service["spec"]["mode"] == "global";
        let update_state = service["update_status"]["state"].as_str().unwrap_or("");
        if ["paused", "rollback_paused"].contains(&update_state) {
            if tty {
                multi.clear().ok();
            }
            bail!("{}", service["update_status"]["message"].as_str().unwrap_or("update paused"));
        }
        // The newest runnable task per slot (node for global services).
        let mut slots: std::collections::BTreeMap<String, SlotView> = Default::default();
        let mut failures = Vec::new();
        for t in &tasks {
            let current = t["current"].as_bool().unwrap_or(false);
            let state = t["status"]["state"].as_str().unwrap_or("new").to_owned();
            let err = t["status"]["err"].as_str().map(str::to_owned);
            if current && ["failed", "rejected"].contains(&state.as_str()) {
                failures.push(err.clone().unwrap_or_else(|| state.clone()));
            }
            if t["desired"] != "running" || !current {
                continue;
            }
            let key = if global {
                t["node"].as_str().unwrap_or("").to_owned()
            } else {
                format!("{:>6}", t["slot"].as_u64().unwrap_or(0))
            };
            let newer =
                slots.get(&key).is_none_or(|s| step(&s.state) <= step(&state) || s.state == "running");
            if newer && !state.is_empty() {
                let label = if global { key.clone() } else { t["slot"].to_string() };
                let id = t["id"].as_str().unwrap_or("").to_owned();
                slots.insert(key, SlotView { id, label, state, err });
            }
        }
        let desired = service["desired"].as_u64().unwrap_or(0) as usize;
        let total = if global { slots.len() } else { desired };
        let running = slots.values().filter(|s| s.state == "running").count();
        let active = ["updating", "rollback_started"].contains(&update_state);
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
                bar.set_prefix(if global { slot.label.clone() } else { format!("{}/{total}", slot.label) });
                bar.set_message(
                    slot.err.clone().filter(|_| slot.state == "pending").unwrap_or(slot.state.clone()),
                );
                bar.set_position(step(&slot.state));
            }
        } else if !quiet && line != last_line {
            writeln!(out(), "{line}")?;
        }
        last_line = line;
        let all_running = running >= total && slots.values().all(|s| s.state == "running") && !active;
        // As docker does, wait out the monitor period before calling the
        // service converged: a task that dies right after starting counts.
        let ids: Vec<String> = slots.values().map(|s| s.id.clone()).collect();
        let monitor = Duration::from_millis(service["spec"]["update"]["monitor_ms"].as_u64().unwrap_or(0));
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
                        let prefix =
                            if global { slot.label.clone() } else { format!("{}/{total}", slot.label) };
                        writeln!(o, "{prefix}: running   [{}>]", "=".repeat(50))?;
                    }
                }
                writeln!(o, "verify: Service converged")?;
            }
            return Ok(());
        }
        // Cannot converge: a task that stays pending, or tasks that keep failing.
        let pending = slots.values().find_map(|s| (s.state == "pending").then(|| s.err.clone()).flatten());
        if let Some(reason) = &pending {
            let since = *stuck_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(5) {
                if tty {
                    multi.clear().ok();
                }
                bail!("service {} cannot converge: {reason}", service["spec"]["name"].as_str().unwrap_or(id));
            }
        } else {
            stuck_since = None;
        }
        if failures.len() >= 3
            || (!failures.is_empty() && service["spec"]["task"]["restart"]["condition"] == "none")
        {
            if tty {
                multi.clear().ok();
            }
            bail!(
                "service {} cannot converge: {} (see `shoal service ps {}`)",
                service["spec"]["name"].as_str().unwrap_or(id),
                failures[0],
                service["spec"]["name"].as_str().unwrap_or(id)
            );
        }
        if started.elapsed() > limit {
            bail!("the service did not converge in {} s: see `shoal service ps`", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ports_text(ports: &Value) -> String {
    ports
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("*:{}->{}/{}", p["published"], p["target"], p["protocol"].as_str().unwrap_or("tcp")))
        .collect::<Vec<_>>()
        .join(", ")
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn ls(client: &Client, quiet: bool, json: bool) -> anyhow::Result<()> {
    let services = client.call("GET", "/v1/services", None)?;
    if json {
        for s in services.as_array().into_iter().flatten() {
            writeln!(out(), "{s}")?;
        }
        return Ok(());
    }
    let mut rows = vec![vec![
        "ID".into(),
        "NAME".into(),
        "MODE".into(),
        "REPLICAS".into(),
        "IMAGE".into(),
        "PORTS".into(),
    ]];
    for s in services.as_array().into_iter().flatten() {
        let id = s["id"].as_str().unwrap_or("");
        if quiet {
            writeln!(out(), "{id}")?;
            continue;
        }
        let global = s["spec"]["mode"] == "global";
        let mut replicas = format!("{}/{}", s["running"], s["desired"]);
        let max = s["spec"]["task"]["placement"]["max_replicas"].as_u64().unwrap_or(0);
        if max > 0 {
            replicas.push_str(&format!(" (max {max} per node)"));
        }
        rows.push(vec![
            short(id).to_owned(),
            s["spec"]["name"].as_str().unwrap_or("").to_owned(),
            if global { "global" } else { "replicated" }.to_owned(),
            replicas,
            s["spec"]["task"]["image"].as_str().unwrap_or("").to_owned(),
            ports_text(&s["spec"]["ports"]),
        ]);
    }
    if !quiet {
        write!(out(), "{}", crate::cluster_cli::table(&rows))?;
    }
    Ok(())
}

/// "Running 2 minutes ago", as docker says it.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0 => "Less than a second ago".into(),
        1 => "1 second ago".into(),
        2..=59 => format!("{secs} seconds ago"),
        60..=119 => "About a minute ago".into(),
        120..=3599 => format!("{} minutes ago", secs / 60),
        3600..=7199 => "About an hour ago".into(),
        7200..=172_799 => format!("{} hours ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

fn ps(
    client: &Client,
    service: &str,
    no_trunc: bool,
    filters: &[String],
    quiet: bool,
    json: bool,
) -> anyhow::Result<()> {
    let answer = client.call("GET", &format!("/v1/services/{service}/tasks"), None)?;
    let mut wanted_desired = Vec::new();
    let mut wanted_node = Vec::new();
    let mut wanted_name = Vec::new();
    for f in filters {
        match f.split_once('=') {
            Some(("desired-state", v))
                if ["running", "shutdown", "accepted", "ready", "remove"].contains(&v) =>
            {
                wanted_desired.push(v.to_owned())
            }
            Some(("node", v)) => wanted_node.push(v.to_owned()),
            Some(("name", v)) => wanted_name.push(v.to_owned()),
            _ => bail!(
                "invalid filter {f:?}: use desired-state=running|shutdown|accepted, node=NODE or name=NAME"
            ),
        }
    }
    let mut rows = vec![
        ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
            .map(str::to_owned)
            .to_vec(),
    ];
    let mut previous_slot = None;
    for t in answer["tasks"].as_array().into_iter().flatten() {
        let desired = t["desired"].as_str().unwrap_or("");
        let desired_match = wanted_desired.is_empty()
            || wanted_desired.iter().any(|w| w == desired || (w == "accepted" && desired == "running"));
        let node = t["node"].as_str().unwrap_or("");
        let name = t["name"].as_str().unwrap_or("");
        if !desired_match
            || (!wanted_node.is_empty() && !wanted_node.iter().any(|n| n == node))
            || (!wanted_name.is_empty() && !wanted_name.iter().any(|n| n == name))
        {
            continue;
        }
        let id = t["id"].as_str().unwrap_or("");
        if quiet {
            writeln!(out(), "{id}")?;
            continue;
        }
        if json {
            writeln!(out(), "{t}")?;
            continue;
        }
        let slot_key = (t["slot"].as_u64(), if t["slot"] == 0 { node.to_owned() } else { String::new() });
        let shown_name =
            if previous_slot.as_ref() == Some(&slot_key) { format!(" \\_ {name}") } else { name.to_owned() };
        previous_slot = Some(slot_key);
        let mut err = t["status"]["err"].as_str().map(|e| format!("\"{e}\"")).unwrap_or_default();
        if !no_trunc && err.chars().count() > 30 {
            err = format!("{}…\"", err.chars().take(28).collect::<String>());
        }
        let state = format!(
            "{} {}",
            t["state_title"].as_str().unwrap_or(""),
            ago(t["status"]["timestamp_ms"].as_u64().unwrap_or(0))
        );
        let mut image = t["spec"]["image"].as_str().unwrap_or("").to_owned();
        if !no_trunc && image.len() > 30 {
            image.truncate(30);
        }
        rows.push(vec![
            if no_trunc { id.to_owned() } else { short(id).to_owned() },
            shown_name,
            image,
            node.to_owned(),
            t["desired_title"].as_str().unwrap_or("").to_owned(),
            state,
            err,
            if t["status"]["state"] == "running" { ports_text(&t["ports"]) } else { String::new() },
        ]);
    }
    if !quiet && !json {
        write!(out(), "{}", crate::cluster_cli::table(&rows))?;
    }
    Ok(())
}

/// A spec in the shape of docker's `ServiceSpec` (durations in ns).
fn docker_spec(spec: &ServiceSpec) -> Value {
    let ns = |ms: u64| ms.saturating_mul(1_000_000);
    let t = &spec.task;
    let mut container = serde_json::json!({
        "Image": t.image, "Args": t.args, "Env": t.env, "StopGracePeriod": ns(t.stop_grace_ms),
        "StopSignal": t.stop_signal,
    });
    for (key, value) in [("Dir", &t.workdir), ("User", &t.user), ("Hostname", &t.hostname)] {
        if let Some(v) = value {
            container[key] = v.clone().into();
        }
    }
    if let Some(h) = &t.health {
        container["Healthcheck"] = serde_json::json!({
            "Test": ["CMD-SHELL", h.cmd], "Interval": ns(h.interval_ms), "Timeout": ns(h.timeout_ms),
            "Retries": h.retries, "StartPeriod": ns(h.start_period_ms),
        });
    }
    let update = |u: &UpdateConfig| {
        serde_json::json!({
            "Parallelism": u.parallelism, "Delay": ns(u.delay_ms), "FailureAction": u.failure_action,
            "Monitor": ns(u.monitor_ms), "MaxFailureRatio": u.max_failure_ratio, "Order": u.order,
        })
    };
    let mode = match spec.mode {
        Mode::Replicated { replicas } => serde_json::json!({ "Replicated": { "Replicas": replicas } }),
        Mode::Global => serde_json::json!({ "Global": {} }),
    };
    let r = &t.resources;
    serde_json::json!({
        "Name": spec.name,
        "Labels": spec.labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": { "NanoCPUs": r.limit_nano_cpus, "MemoryBytes": r.limit_memory, "Pids": r.limit_pids },
                "Reservations": { "NanoCPUs": r.reserve_nano_cpus, "MemoryBytes": r.reserve_memory },
            },
            "RestartPolicy": {
                "Condition": t.restart.condition, "Delay": ns(t.restart.delay_ms),
                "MaxAttempts": t.restart.max_attempts, "Window": ns(t.restart.window_ms),
            },
            "Placement": {
                "Constraints": t.placement.constraints,
                "Preferences": t.placement.spread.iter()
                    .map(|k| serde_json::json!({ "Spread": { "SpreadDescriptor": format!("node.labels.{k}") } }))
                    .collect::<Vec<_>>(),
                "MaxReplicas": t.placement.max_replicas,
            },
            "Networks": t.networks.iter().map(|n| serde_json::json!({ "Target": n })).collect::<Vec<_>>(),
            "ForceUpdate": t.force_update,
        },
        "Mode": mode,
        "UpdateConfig": update(&spec.update),
        "RollbackConfig": update(&spec.rollback),
        "EndpointSpec": {
            "Mode": "vip",
            "Ports": spec.ports.iter().map(|p| serde_json::json!({
                "Protocol": p.protocol, "TargetPort": p.target, "PublishedPort": p.published, "PublishMode": p.mode,
            })).collect::<Vec<_>>(),
        },
    })
}

/// A service as `docker service inspect` prints it.
fn docker_service(s: &Value) -> anyhow::Result<Value> {
    let spec: ServiceSpec =
        serde_json::from_value(s["spec"].clone()).context("the manager sent a bad spec")?;
    let mut out = serde_json::json!({
        "ID": s["id"],
        "Version": { "Index": s["version"] },
        "CreatedAt": rfc3339(s["created_ms"].as_u64().unwrap_or(0)),
        "UpdatedAt": rfc3339(s["updated_ms"].as_u64().unwrap_or(0)),
        "Spec": docker_spec(&spec),
        "Endpoint": {
            "Spec": { "Mode": "vip" },
            "VirtualIPs": s["vips"].as_array().into_iter().flatten().map(|v| serde_json::json!({
                "Network": v["network"], "Addr": format!("{}/{}", v["ip"].as_str().unwrap_or(""),
                    v["subnet"].as_str().and_then(|n| n.split('/').nth(1)).unwrap_or("24")),
            })).collect::<Vec<_>>(),
        },
        "ServiceStatus": { "RunningTasks": s["running"], "DesiredTasks": s["desired"] },
    });
    if let Ok(previous) = serde_json::from_value::<ServiceSpec>(s["previous"].clone()) {
        out["PreviousSpec"] = docker_spec(&previous);
    }
    if let Some(u) = s["update_status"].as_object() {
        let mut status = serde_json::json!({
            "State": u["state"], "Message": u["message"],
            "StartedAt": rfc3339(u["started_ms"].as_u64().unwrap_or(0)),
        });
        if let Some(done) = u["completed_ms"].as_u64() {
            status["CompletedAt"] = rfc3339(done).into();
        }
        out["UpdateStatus"] = status;
    }
    Ok(out)
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

fn inspect(client: &Client, services: &[String], pretty: bool) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for s in services {
        all.push(client.call("GET", &format!("/v1/services/{s}"), None)?);
    }
    if !pretty {
        let docker: Vec<Value> = all.iter().map(docker_service).collect::<anyhow::Result<_>>()?;
        serde_json::to_writer_pretty(out(), &docker)?;
        writeln!(out())?;
        return Ok(());
    }
    let mut o = out();
    for (i, s) in all.iter().enumerate() {
        if i > 0 {
            writeln!(o)?;
        }
        let spec: ServiceSpec = serde_json::from_value(s["spec"].clone())?;
        writeln!(o, "ID:\t\t{}", s["id"].as_str().unwrap_or(""))?;
        writeln!(o, "Name:\t\t{}", spec.name)?;
        match spec.mode {
            Mode::Replicated { replicas } => {
                writeln!(o, "Service Mode:\tReplicated\n Replicas:\t{replicas}")?
            }
            Mode::Global => writeln!(o, "Service Mode:\tGlobal")?,
        }
        if let Some(u) = s["update_status"].as_object() {
            writeln!(o, "UpdateStatus:\n State:\t\t{}", u["state"].as_str().unwrap_or(""))?;
            writeln!(o, " Message:\t{}", u["message"].as_str().unwrap_or(""))?;
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
        for (title, u) in [("UpdateConfig", &spec.update), ("RollbackConfig", &spec.rollback)] {
            writeln!(o, "{title}:\n Parallelism:\t{}", u.parallelism)?;
            if u.delay_ms > 0 {
                writeln!(o, " Delay:\t\t{}", ms_text(u.delay_ms))?;
            }
            writeln!(o, " On failure:\t{}", serde_json::to_value(u.failure_action)?.as_str().unwrap_or(""))?;
            writeln!(o, " Monitoring Period: {}", ms_text(u.monitor_ms))?;
            writeln!(o, " Max failure ratio: {}", u.max_failure_ratio)?;
            writeln!(o, " Update order:      {}", serde_json::to_value(u.order)?.as_str().unwrap_or(""))?;
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
        let networks: Vec<String> = s["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                format!("{} (VIP {})", v["network"].as_str().unwrap_or(""), v["ip"].as_str().unwrap_or(""))
            })
            .collect();
        if !networks.is_empty() {
            writeln!(o, "Networks:\t{}", networks.join(" "))?;
        }
        writeln!(o, "Endpoint Mode:\tvip")?;
        if !spec.ports.is_empty() {
            writeln!(o, "Ports:")?;
            for p in &spec.ports {
                writeln!(
                    o,
                    " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
                    p.published, p.protocol, p.target, p.mode
                )?;
            }
        }
    }
    Ok(())
}

fn logs(
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
            let task = l["task"].as_str().unwrap_or("");
            let prefix = if no_ids {
                format!("{name}@{}", l["node"].as_str().unwrap_or(""))
            } else {
                format!("{name}.{}@{}", short(task), l["node"].as_str().unwrap_or(""))
            };
            let stamp = if timestamps { format!("{} ", rfc3339(ts)) } else { String::new() };
            writeln!(o, "{prefix}    | {stamp}{}", l["text"].as_str().unwrap_or(""))?;
        }
        drop(o);
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `2026-11-26T10:00:00.123456789Z` from ms since the epoch (UTC).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Runs a `task` verb.
pub fn task(client: &Client, command: TaskCommand) -> anyhow::Result<()> {
    match command {
        TaskCommand::Exec { workdir, env, task, command } => {
            let info = client.call("GET", &format!("/v1/local/tasks/{task}/exec"), None)?;
            let mut enter: shoal_runtime::EnterSpec =
                serde_json::from_value(info["enter"].clone()).context("the daemon sent a bad exec spec")?;
            if let Some(w) = workdir {
                enter.workdir = w;
            }
            for kv in &env {
                check_env(kv)?;
                set_env(&mut enter.env, kv);
            }
            enter.argv = command;
            let exe = "/proc/self/exe";
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new(exe).arg("__enter").arg(serde_json::to_string(&enter)?).exec();
            Err(e).context("run the command in the task")
        }
        TaskCommand::Inspect { task } => {
            let value = client.call("GET", &format!("/v1/tasks/{task}"), None)?;
            serde_json::to_writer_pretty(out(), &value)?;
            writeln!(out())?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_sizes_and_cpus() {
        assert_eq!(parse_ms("5s"), Ok(5000));
        assert_eq!(parse_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_ms("250ms"), Ok(250));
        assert_eq!(parse_ms("0"), Ok(0));
        assert!(parse_ms("5").is_err());
        assert!(parse_ms("5x").is_err());
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("lots").is_err());
        assert_eq!(parse_cpus("0.5"), Ok(500_000_000));
        assert!(parse_cpus("-1").is_err());
    }

    #[test]
    fn publish_and_prefs() {
        let p = parse_publish("8080:80").unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol.as_str(), p.mode.as_str()),
            (8080, 80, "tcp", "ingress")
        );
        let p = parse_publish("published=53,target=5353,protocol=udp,mode=host").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str(), p.mode.as_str()), (53, 5353, "udp", "host"));
        assert!(parse_publish("8080").is_err());
        assert!(parse_publish("8080:80/sctp").is_err());
        assert_eq!(parse_pref("spread=node.labels.zone").unwrap(), "zone");
        assert!(parse_pref("spread=node.role").is_err());
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

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123000000Z");
    }
}
