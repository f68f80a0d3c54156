//! From `-c` files to what a stack deploys: each file read, interpolated
//! with the `.env` next to the first one and the shell's environment,
//! merged in order, checked, and turned into the networks and service
//! specs of the stack `<name>`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use shoal_compose::stack::{NetworkDef, ServiceDef, ServiceMode, Stack};
use shoal_compose::{Resolver, Vars};
use shoal_orch::{
    EndpointMode, FailureAction, HealthCheck, Mode, Mount, MountKind, PortConfig, RestartCondition,
    STACK_LABEL, ServiceSpec, TaskSpec, UpdateConfig, UpdateOrder,
};

use crate::cli::service::{read_env_file, set_env};

/// What `stack deploy` reads: the merged stack, where it came from, and
/// what to warn about.
pub struct Loaded {
    /// The files merged.
    pub stack: Stack,
    /// The first file's directory: relative paths start there.
    pub dir: PathBuf,
    /// Docker's warnings (unset variables, ignored keys), to print once.
    pub warnings: Vec<String>,
}

/// Reads, interpolates, merges and checks the compose files `files` (`-`
/// is standard input; relative paths then start in the working directory).
pub fn load(files: &[PathBuf]) -> anyhow::Result<Loaded> {
    let first = files.first().context("stack deploy needs a compose file: use -c docker-compose.yml")?;
    let dir = first.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let dotenv_path = dir.join(".env");
    let dotenv = match std::fs::read_to_string(&dotenv_path) {
        Ok(text) => shoal_compose::parse_dotenv(&text)
            .map_err(|e| anyhow::anyhow!("{}:{}: {}", dotenv_path.display(), e.line, e.problem))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", dotenv_path.display())),
    };
    let vars = Vars::new(dotenv, std::env::vars());
    let mut merged: Option<Stack> = None;
    let mut warnings = Vec::new();
    let mut ignored: Vec<&'static str> = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let text = if name == "-" {
            // `-c -`: the file on standard input, as docker reads it.
            std::io::read_to_string(std::io::stdin()).context("read the compose file from standard input")?
        } else {
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("open {name}: {e}"))?
        };
        let file = shoal_compose::parse(&name, &text)?;
        for key in
            file.unsupported().into_iter().chain(file.services.values().flat_map(|s| s.value.unsupported()))
        {
            if !ignored.contains(&key) {
                ignored.push(key);
            }
        }
        let mut resolver = Resolver::new(&name, &vars);
        let stack = shoal_compose::stack::resolve(&file, &mut resolver)?;
        for w in resolver.warnings() {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        merged = Some(match merged {
            None => stack,
            Some(base) => base.merge(stack),
        });
    }
    let stack = merged.unwrap_or_default();
    stack.check(&first.display().to_string())?;
    if !ignored.is_empty() {
        ignored.sort_unstable();
        warnings.push(format!("Ignoring unsupported options: {}\n", ignored.join(", ")));
    }
    Ok(Loaded { stack, dir, warnings })
}

/// A network the stack uses: its name in the swarm, and how to make it
/// when the stack owns it (`None` for an external one).
pub struct StackNetwork {
    pub name: String,
    pub create: Option<NetworkDef>,
}

/// `<stack>_<key>`, docker's scoping of a stack's objects.
pub fn scoped(stack: &str, key: &str) -> String {
    format!("{stack}_{key}")
}

/// The networks the stack's services use, by their key in the file.
pub fn networks(stack: &str, s: &Stack) -> BTreeMap<String, StackNetwork> {
    let mut out = BTreeMap::new();
    for def in s.services.values() {
        for key in def.attached_networks().into_keys() {
            let declared = s.networks.get(&key).cloned().unwrap_or_default();
            let name = match (&declared.name, declared.external) {
                (Some(name), _) => name.clone(),
                (None, true) => key.clone(),
                (None, false) => scoped(stack, &key),
            };
            let create = (!declared.external).then(|| {
                let mut d = declared.clone();
                d.labels.insert(STACK_LABEL.to_owned(), stack.to_owned());
                d
            });
            out.insert(key, StackNetwork { name, create });
        }
    }
    out
}

/// The spec of the stack's service `key`.
pub fn service_spec(
    stack: &str,
    key: &str,
    def: &ServiceDef,
    all: &Stack,
    networks: &BTreeMap<String, StackNetwork>,
    dir: &Path,
) -> anyhow::Result<ServiceSpec> {
    let mut args = def.entrypoint.clone().unwrap_or_default();
    args.extend(def.command.clone().unwrap_or_default());
    // The entrypoint (or command) names the program when there is one, as
    // docker's image entrypoint would: `image: python3` with `command:
    // [app.py]`, or `entrypoint: [python3, app.py]`.
    let image = def.image.clone().unwrap_or_default();
    let (image, args) = match def.entrypoint.as_ref().and_then(|e| e.first()) {
        Some(program) => (program.clone(), args[1..].to_vec()),
        None => (image, args),
    };
    let mut task = TaskSpec { image, args, ..TaskSpec::default() };
    for file in &def.env_files {
        for kv in read_env_file(&dir.join(file))? {
            set_env(&mut task.env, &kv);
        }
    }
    for (k, v) in &def.environment {
        match v.clone().or_else(|| std::env::var(k).ok()) {
            Some(v) => set_env(&mut task.env, &format!("{k}={v}")),
            None => task.env.retain(|e| e.split('=').next() != Some(k.as_str())),
        }
    }
    for (network_key, mut aliases) in def.attached_networks() {
        let name = networks.get(&network_key).map_or_else(|| network_key.clone(), |n| n.name.clone());
        // The short name resolves inside the stack, as in docker.
        if !aliases.contains(&key.to_owned()) {
            aliases.insert(0, key.to_owned());
        }
        task.aliases.insert(name.clone(), aliases);
        task.networks.push(name);
    }
    task.workdir = def.working_dir.clone();
    task.user = def.user.clone();
    task.hostname = def.hostname.clone();
    let r = &def.resources;
    task.resources.limit_nano_cpus = r.limit_nano_cpus.unwrap_or(0);
    task.resources.limit_memory = r.limit_memory.unwrap_or(0);
    task.resources.limit_pids = r.limit_pids.unwrap_or(0);
    task.resources.reserve_nano_cpus = r.reserve_nano_cpus.unwrap_or(0);
    task.resources.reserve_memory = r.reserve_memory.unwrap_or(0);
    let p = &def.restart;
    if let Some(c) = &p.condition {
        task.restart.condition = match c.as_str() {
            "none" => RestartCondition::None,
            "on-failure" => RestartCondition::OnFailure,
            _ => RestartCondition::Any,
        };
    }
    task.restart.delay_ms = p.delay_ms.unwrap_or(task.restart.delay_ms);
    task.restart.max_attempts = p.max_attempts.unwrap_or(0);
    task.restart.window_ms = p.window_ms.unwrap_or(0);
    task.placement.constraints = def.constraints.clone().unwrap_or_default();
    task.placement.spread = def.spread.clone().unwrap_or_default();
    task.placement.max_replicas = def.max_replicas_per_node.unwrap_or(0);
    if let Some(h) = def.healthcheck.as_ref().filter(|h| !h.disabled) {
        let Some(cmd) = &h.command else {
            bail!("service {key:?}: the healthcheck has no test: set healthcheck.test")
        };
        task.health = Some(HealthCheck {
            cmd: cmd.clone(),
            interval_ms: h.interval_ms.unwrap_or(30_000),
            timeout_ms: h.timeout_ms.unwrap_or(30_000),
            retries: h.retries.unwrap_or(3),
            start_period_ms: h.start_period_ms.unwrap_or(0),
        });
    }
    if let Some(ms) = def.stop_grace_ms {
        task.stop_grace_ms = ms;
    }
    if let Some(signal) = &def.stop_signal {
        task.stop_signal =
            crate::cli::flags::signal(signal).map_err(|e| anyhow::anyhow!("service {key:?}: {e}"))?;
    }
    for m in &def.mounts {
        task.mounts.push(mount(stack, m, all, dir)?);
    }
    let mut labels = def.labels.clone();
    labels.insert(STACK_LABEL.to_owned(), stack.to_owned());
    let mut spec = ServiceSpec {
        name: scoped(stack, key),
        mode: match def.mode {
            Some(ServiceMode::Global) => Mode::Global,
            _ => Mode::Replicated { replicas: def.replicas.unwrap_or(1) },
        },
        labels,
        task,
        update: update_config(&def.update, UpdateConfig::default()),
        rollback: update_config(&def.rollback, UpdateConfig::default()),
        ports: def
            .ports
            .iter()
            .map(|p| PortConfig {
                name: p.name.clone(),
                published: p.published,
                target: p.target,
                protocol: p.protocol.clone(),
                mode: p.mode.clone(),
                proxy_protocol: p.proxy_protocol,
                local_only: p.local_only,
            })
            .collect(),
        endpoint: Default::default(),
        depends_on: def.depends_on.keys().map(|d| scoped(stack, d)).collect(),
    };
    if def.endpoint_mode.as_deref() == Some("dnsrr") {
        spec.endpoint.mode = EndpointMode::Dnsrr;
    }
    Ok(spec)
}

fn update_config(def: &shoal_compose::stack::UpdateDef, base: UpdateConfig) -> UpdateConfig {
    UpdateConfig {
        parallelism: def.parallelism.unwrap_or(base.parallelism),
        delay_ms: def.delay_ms.unwrap_or(base.delay_ms),
        failure_action: match def.failure_action.as_deref() {
            Some("continue") => FailureAction::Continue,
            Some("rollback") => FailureAction::Rollback,
            Some(_) => FailureAction::Pause,
            None => base.failure_action,
        },
        monitor_ms: def.monitor_ms.unwrap_or(base.monitor_ms),
        max_failure_ratio: def.max_failure_ratio.unwrap_or(base.max_failure_ratio),
        order: match def.order.as_deref() {
            Some("start-first") => UpdateOrder::StartFirst,
            Some(_) => UpdateOrder::StopFirst,
            None => base.order,
        },
    }
}

/// A service's mount: a named volume scoped to the stack (unless external
/// or named), a bind's relative source from the file's directory.
fn mount(
    stack: &str,
    m: &shoal_compose::mounts::MountDesc,
    all: &Stack,
    dir: &Path,
) -> anyhow::Result<Mount> {
    use shoal_compose::mounts::MountKind as K;
    let kind = match m.kind {
        K::Volume => MountKind::Volume,
        K::Bind => MountKind::Bind,
        K::Tmpfs => MountKind::Tmpfs,
    };
    let source = match m.kind {
        K::Volume if m.source.is_empty() => String::new(),
        K::Volume => match all.volumes.get(&m.source) {
            Some(v) => match (&v.name, v.external) {
                (Some(name), _) => name.clone(),
                (None, true) => m.source.clone(),
                (None, false) => scoped(stack, &m.source),
            },
            None => scoped(stack, &m.source),
        },
        K::Bind if Path::new(&m.source).is_relative() => {
            let path = dir.join(&m.source);
            path.canonicalize()
                .map_err(|e| anyhow::anyhow!("bind source {} ({}): {e}", m.source, path.display()))?
                .display()
                .to_string()
        }
        K::Bind | K::Tmpfs => m.source.clone(),
    };
    Ok(Mount { kind, source, target: m.target.clone(), readonly: m.readonly })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(text: &str) -> Stack {
        let vars = Vars::new([], []);
        let file = shoal_compose::parse("t.yml", text).unwrap();
        let stack = shoal_compose::stack::resolve(&file, &mut Resolver::new("t.yml", &vars)).unwrap();
        stack.check("t.yml").unwrap();
        stack
    }

    #[test]
    fn a_service_becomes_a_spec_scoped_to_its_stack() {
        let s = stack(
            r#"
services:
  web:
    image: python3
    entrypoint: ["gunicorn", "-b", "0.0.0.0:80"]
    command: ["app:app"]
    networks:
      front: {aliases: [www]}
      ext: {}
    volumes: ["data:/srv", "/etc/hostname:/etc/hostname:ro", "/scratch"]
    depends_on: [db]
    deploy:
      mode: global
      labels: {tier: front}
      endpoint_mode: dnsrr
      update_config: {failure_action: rollback, order: start-first}
    stop_signal: SIGQUIT
  db:
    image: redis-server
networks:
  front: {attachable: true, ipam: {config: [{subnet: 10.9.0.0/24}]}}
  ext: {external: true, name: shared}
volumes:
  data: {}
"#,
        );
        let networks = networks("demo", &s);
        assert_eq!(networks["front"].name, "demo_front");
        let front = networks["front"].create.as_ref().unwrap();
        assert!(front.attachable && front.subnet.as_deref() == Some("10.9.0.0/24"));
        assert_eq!(front.labels[STACK_LABEL], "demo");
        assert!(networks["ext"].create.is_none() && networks["ext"].name == "shared");
        assert_eq!(networks["default"].name, "demo_default", "db is on the default network");

        let spec = service_spec("demo", "web", &s.services["web"], &s, &networks, Path::new(".")).unwrap();
        assert_eq!(spec.name, "demo_web");
        assert_eq!(
            (spec.task.image.as_str(), spec.task.args.as_slice()),
            ("gunicorn", &["-b".to_owned(), "0.0.0.0:80".into(), "app:app".into()][..])
        );
        assert_eq!(spec.task.networks, ["shared", "demo_front"], "by key: ext, front");
        assert_eq!(spec.task.aliases["demo_front"], ["web", "www"]);
        assert_eq!(spec.task.aliases["shared"], ["web"]);
        assert_eq!(spec.mode, Mode::Global);
        assert_eq!((spec.labels["tier"].as_str(), spec.labels[STACK_LABEL].as_str()), ("front", "demo"));
        assert_eq!(spec.endpoint.mode, EndpointMode::Dnsrr);
        assert_eq!(
            (spec.update.failure_action, spec.update.order),
            (FailureAction::Rollback, UpdateOrder::StartFirst)
        );
        assert_eq!(spec.task.stop_signal, "SIGQUIT");
        assert_eq!(spec.depends_on, ["demo_db"]);
        let mounts: Vec<(MountKind, &str, &str, bool)> = spec
            .task
            .mounts
            .iter()
            .map(|m| (m.kind, m.source.as_str(), m.target.as_str(), m.readonly))
            .collect();
        assert_eq!(
            mounts,
            [
                (MountKind::Volume, "demo_data", "/srv", false),
                (MountKind::Bind, "/etc/hostname", "/etc/hostname", true),
                (MountKind::Volume, "", "/scratch", false),
            ]
        );
        let db = service_spec("demo", "db", &s.services["db"], &s, &networks, Path::new(".")).unwrap();
        assert_eq!((db.task.image.as_str(), db.mode), ("redis-server", Mode::Replicated { replicas: 1 }));
        assert_eq!(db.task.networks, ["demo_default"]);
    }
}
