//! A compose file resolved into a stack: every value interpolated and
//! typed ([`resolve`]), several files merged as `docker stack deploy -c a
//! -c b` merges them ([`Stack::merge`]), and the references between
//! services, networks and volumes checked ([`Stack::check`]).
//!
//! What a stack is made of stays plain data here (no orchestrator types):
//! `shoal stack deploy` turns each [`ServiceDef`] into a service spec.
//! Fields a file leaves out are `None` (or empty), so that a later file
//! overrides only what it sets.

use std::collections::BTreeMap;

use serde_saphyr::{Location, Spanned};

use crate::model::{
    self, ComposeFile, DependsOn, Healthcheck, Limits, ParseError, Port, Scalar, ServiceNetworks,
    StringOrList,
};
use crate::mounts::{self, MountDesc};
use crate::ports::{self, Publish};
use crate::resolve::Resolver;
use crate::units;

/// A whole stack: its services, and the networks and volumes it declares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stack {
    pub services: BTreeMap<String, ServiceDef>,
    pub networks: BTreeMap<String, NetworkDef>,
    pub volumes: BTreeMap<String, VolumeDef>,
}

/// One service, as resolved from one file or merged from several.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceDef {
    /// Where the service was defined (for errors found after merging).
    pub at: Option<Place>,
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// `environment:`; a `None` value is taken from the deploying shell.
    pub environment: BTreeMap<String, Option<String>>,
    /// `env_file:` paths as written (relative to the file's directory).
    pub env_files: Vec<String>,
    pub ports: Vec<Publish>,
    /// Network name to aliases; `None` is the stack's `default` network.
    pub networks: Option<BTreeMap<String, Vec<String>>>,
    pub mode: Option<ServiceMode>,
    pub replicas: Option<u64>,
    /// `deploy.labels`: the service's labels.
    pub labels: BTreeMap<String, String>,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: Option<String>,
    pub update: UpdateDef,
    pub rollback: UpdateDef,
    pub restart: RestartDef,
    pub resources: ResourcesDef,
    pub constraints: Option<Vec<String>>,
    /// Label keys of `spread: node.labels.KEY`.
    pub spread: Option<Vec<String>>,
    pub max_replicas_per_node: Option<u64>,
    pub healthcheck: Option<HealthDef>,
    pub stop_grace_ms: Option<u64>,
    pub stop_signal: Option<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub mounts: Vec<MountDesc>,
    /// Services started first, and whether each must be healthy.
    pub depends_on: BTreeMap<String, bool>,
}

/// Where something was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl Place {
    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError { file: self.file.clone(), line: self.line, column: self.column, message: message.into() }
    }
}

/// `deploy.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceMode {
    Replicated,
    Global,
}

/// `deploy.update_config` and `deploy.rollback_config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateDef {
    pub parallelism: Option<u64>,
    pub delay_ms: Option<u64>,
    /// `continue`, `pause` or `rollback`.
    pub failure_action: Option<String>,
    pub monitor_ms: Option<u64>,
    pub max_failure_ratio: Option<f64>,
    /// `stop-first` or `start-first`.
    pub order: Option<String>,
}

/// `deploy.restart_policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestartDef {
    /// `none`, `on-failure` or `any`.
    pub condition: Option<String>,
    pub delay_ms: Option<u64>,
    pub max_attempts: Option<u64>,
    pub window_ms: Option<u64>,
}

/// `deploy.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourcesDef {
    pub limit_nano_cpus: Option<u64>,
    pub limit_memory: Option<u64>,
    pub limit_pids: Option<u64>,
    pub reserve_nano_cpus: Option<u64>,
    pub reserve_memory: Option<u64>,
}

/// `healthcheck:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthDef {
    /// The shell command; `None` when the check is disabled.
    pub command: Option<String>,
    pub disabled: bool,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub retries: Option<u64>,
    pub start_period_ms: Option<u64>,
}

/// A top-level network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkDef {
    /// Made elsewhere: used, never created or removed by the stack.
    pub external: bool,
    /// Its name in the swarm when not `<stack>_<key>`.
    pub name: Option<String>,
    pub attachable: bool,
    pub subnet: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// A top-level volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeDef {
    pub external: bool,
    /// Its name on the nodes when not `<stack>_<key>`.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// Resolves one parsed file with `r` (its variables and name).
pub fn resolve(file: &ComposeFile, r: &mut Resolver<'_>) -> Result<Stack, ParseError> {
    let mut stack = Stack::default();
    for (name, service) in &file.services {
        let mut def = resolve_service(&service.value, r)?;
        def.at = Some(place(r, &service.defined));
        stack.services.insert(name.clone(), def);
    }
    for (name, network) in &file.networks {
        let def = match network {
            None => NetworkDef::default(),
            Some(n) => resolve_network(n, r)?,
        };
        stack.networks.insert(name.clone(), def);
    }
    for (name, volume) in &file.volumes {
        let def = match volume {
            None => VolumeDef::default(),
            Some(v) => resolve_volume(v, r)?,
        };
        stack.volumes.insert(name.clone(), def);
    }
    Ok(stack)
}

fn resolve_volume(v: &model::Volume, r: &mut Resolver<'_>) -> Result<VolumeDef, ParseError> {
    if let Some(driver) = &v.driver {
        let text = r.text(driver)?;
        if text != "local" {
            return Err(
                r.error(&driver.defined, format!("volume driver {text:?} is not supported: use local"))
            );
        }
    }
    Ok(VolumeDef {
        external: opt(r, &v.external, |r, s| r.boolean(s, "external"))?.unwrap_or(false),
        name: opt(r, &v.name, Resolver::text)?,
        labels: labels(r, &v.labels)?,
    })
}

fn place(r: &Resolver<'_>, at: &Location) -> Place {
    let e = r.error(at, "");
    Place { file: e.file, line: e.line, column: e.column }
}

/// `f` over an optional value.
fn opt<'f, T, V>(
    r: &mut Resolver<'f>,
    value: &Option<V>,
    f: impl FnOnce(&mut Resolver<'f>, &V) -> Result<T, ParseError>,
) -> Result<Option<T>, ParseError> {
    value.as_ref().map(|v| f(r, v)).transpose()
}

/// A value in `unit` (`duration_ms`, `bytes`...), its error at the value.
fn unit<T>(
    r: &mut Resolver<'_>,
    value: &Scalar,
    what: &str,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, ParseError> {
    let text = r.text(value)?;
    parse(text.trim()).map_err(|problem| r.error(&value.defined, format!("{what}: {problem}")))
}

/// One of `allowed`, as written.
fn one_of(r: &mut Resolver<'_>, value: &Scalar, what: &str, allowed: &[&str]) -> Result<String, ParseError> {
    let text = r.text(value)?;
    if allowed.contains(&text.as_str()) {
        Ok(text)
    } else {
        Err(r.error(&value.defined, format!("{what} must be one of {}, not {text:?}", allowed.join(", "))))
    }
}

fn labels(
    r: &mut Resolver<'_>,
    value: &Option<Spanned<model::MapOrList>>,
) -> Result<BTreeMap<String, String>, ParseError> {
    let Some(value) = value else { return Ok(BTreeMap::new()) };
    Ok(r.pairs(value)?.into_iter().map(|(k, v)| (k, v.unwrap_or_default())).collect())
}

fn resolve_network(n: &model::Network, r: &mut Resolver<'_>) -> Result<NetworkDef, ParseError> {
    if let Some(driver) = &n.driver {
        let text = r.text(driver)?;
        if text != "overlay" {
            return Err(r.error(
                &driver.defined,
                format!("network driver {text:?} is not supported: Shoal networks use the overlay driver"),
            ));
        }
    }
    let mut subnet = None;
    if let Some(ipam) = &n.ipam {
        if let [one, ..] = ipam.config.as_slice() {
            subnet = Some(r.text(&one.subnet)?);
        }
        if let Some(extra) = ipam.config.get(1) {
            return Err(r.error(&extra.subnet.defined, "a network takes one subnet: remove the others"));
        }
    }
    Ok(NetworkDef {
        external: opt(r, &n.external, |r, s| r.boolean(s, "external"))?.unwrap_or(false),
        name: opt(r, &n.name, Resolver::text)?,
        attachable: opt(r, &n.attachable, |r, s| r.boolean(s, "attachable"))?.unwrap_or(false),
        subnet,
        labels: labels(r, &n.labels)?,
    })
}

fn resolve_service(s: &model::Service, r: &mut Resolver<'_>) -> Result<ServiceDef, ParseError> {
    let mut def = ServiceDef {
        image: opt(r, &s.image, Resolver::text)?,
        command: opt(r, &s.command, Resolver::arguments)?,
        entrypoint: opt(r, &s.entrypoint, Resolver::arguments)?,
        stop_grace_ms: opt(r, &s.stop_grace_period, |r, v| {
            unit(r, v, "stop_grace_period", units::duration_ms)
        })?,
        stop_signal: opt(r, &s.stop_signal, Resolver::text)?,
        working_dir: opt(r, &s.working_dir, Resolver::text)?,
        user: opt(r, &s.user, Resolver::text)?,
        hostname: opt(r, &s.hostname, Resolver::text)?,
        ..ServiceDef::default()
    };
    if let Some(env) = &s.environment {
        def.environment = r.pairs(env)?.into_iter().collect();
    }
    if let Some(files) = &s.env_file {
        def.env_files = r.list(files)?;
    }
    for port in &s.ports {
        def.ports.extend(resolve_port(port, r)?);
    }
    if let Some(networks) = &s.networks {
        let mut map = BTreeMap::new();
        match &networks.value {
            ServiceNetworks::List(names) => {
                for name in names {
                    map.insert(r.expand_at(name, &networks.defined)?, Vec::new());
                }
            }
            ServiceNetworks::Map(entries) => {
                for (name, settings) in entries {
                    let aliases = match settings {
                        None => Vec::new(),
                        Some(n) => n
                            .aliases
                            .iter()
                            .map(|a| r.expand_at(a, &networks.defined))
                            .collect::<Result<_, _>>()?,
                    };
                    map.insert(name.clone(), aliases);
                }
            }
        }
        def.networks = Some(map);
    }
    if let Some(deploy) = &s.deploy {
        resolve_deploy(deploy, &mut def, r)?;
    }
    if let Some(h) = &s.healthcheck {
        def.healthcheck = Some(resolve_health(h, r)?);
    }
    for mount in &s.volumes {
        def.mounts.push(resolve_mount(mount, r)?);
    }
    if let Some(deps) = &s.depends_on {
        let at = deps.defined;
        match &deps.value {
            DependsOn::List(names) => {
                for name in names {
                    def.depends_on.insert(r.expand_at(name, &at)?, false);
                }
            }
            DependsOn::Map(entries) => {
                for (name, condition) in entries {
                    let healthy = match condition.condition.as_ref().map(|c| c.0.as_str()) {
                        None | Some("service_started") => false,
                        Some("service_healthy") => true,
                        Some(other) => {
                            return Err(r.error(
                                &at,
                                format!(
                                    "depends_on condition {other:?} is not supported: use service_started or service_healthy"
                                ),
                            ));
                        }
                    };
                    def.depends_on.insert(name.clone(), healthy);
                }
            }
        }
    }
    Ok(def)
}

fn resolve_port(port: &Spanned<Port>, r: &mut Resolver<'_>) -> Result<Vec<Publish>, ParseError> {
    let at = &port.defined;
    let bad = |r: &Resolver<'_>, text: &str, problem: String| {
        r.error(
            at,
            format!(
                "invalid port {text:?}: {problem}; use [PUBLISHED:]TARGET[/PROTOCOL], such as \"8000:80\""
            ),
        )
    };
    match &port.value {
        Port::Short(text) => {
            let text = r.expand_at(text, at)?;
            ports::parse_short(&text).map_err(|problem| bad(r, &text, problem))
        }
        Port::Long(long) => {
            let mut fields = vec![format!("target={}", r.expand_at(&long.target, at)?)];
            let optional = [
                ("published", &long.published),
                ("protocol", &long.protocol),
                ("mode", &long.mode),
                ("proxy-protocol", &long.proxy_protocol),
                ("traffic-policy", &long.traffic_policy),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    fields.push(format!("{key}={}", r.expand_at(value, at)?));
                }
            }
            let text = fields.join(",");
            ports::parse_long(&text).map(|p| vec![p]).map_err(|problem| bad(r, &text, problem))
        }
    }
}

fn resolve_mount(mount: &Spanned<model::Mount>, r: &mut Resolver<'_>) -> Result<MountDesc, ParseError> {
    let at = &mount.defined;
    let (text, parsed) = match &mount.value {
        model::Mount::Short(text) => {
            let text = r.expand_at(text, at)?;
            let parsed = mounts::parse_short(&text);
            (text, parsed)
        }
        model::Mount::Long(long) => {
            let mut fields = vec![format!("type={}", r.expand_at(&long.kind, at)?)];
            if let Some(source) = &long.source {
                fields.push(format!("source={}", r.expand_at(source, at)?));
            }
            fields.push(format!("target={}", r.expand_at(&long.target, at)?));
            if let Some(ro) = &long.read_only {
                fields.push(format!("readonly={}", r.expand_at(ro, at)?));
            }
            let text = fields.join(",");
            let parsed = mounts::parse_mount_flag(&text);
            (text, parsed)
        }
    };
    parsed.map_err(|problem| r.error(at, format!("invalid volume {text:?}: {problem}")))
}

fn resolve_deploy(d: &model::Deploy, def: &mut ServiceDef, r: &mut Resolver<'_>) -> Result<(), ParseError> {
    if let Some(mode) = &d.mode {
        def.mode = Some(match one_of(r, mode, "deploy.mode", &["replicated", "global"])?.as_str() {
            "global" => ServiceMode::Global,
            _ => ServiceMode::Replicated,
        });
    }
    def.replicas = opt(r, &d.replicas, |r, v| r.number(v, "replicas"))?;
    if let (Some(ServiceMode::Global), Some(replicas)) = (def.mode, &d.replicas) {
        return Err(r.error(&replicas.defined, "replicas can only be used with replicated mode"));
    }
    def.labels = labels(r, &d.labels)?;
    def.endpoint_mode = opt(r, &d.endpoint_mode, |r, v| one_of(r, v, "endpoint_mode", &["vip", "dnsrr"]))?;
    if let Some(u) = &d.update_config {
        def.update = resolve_update(u, r, &["continue", "pause", "rollback"])?;
    }
    if let Some(u) = &d.rollback_config {
        def.rollback = resolve_update(u, r, &["continue", "pause"])?;
    }
    if let Some(p) = &d.restart_policy {
        def.restart = RestartDef {
            condition: opt(r, &p.condition, |r, v| {
                one_of(r, v, "restart_policy.condition", &["none", "on-failure", "any"])
            })?,
            delay_ms: opt(r, &p.delay, |r, v| unit(r, v, "restart_policy.delay", units::duration_ms))?,
            max_attempts: opt(r, &p.max_attempts, |r, v| r.number(v, "max_attempts"))?,
            window_ms: opt(r, &p.window, |r, v| unit(r, v, "restart_policy.window", units::duration_ms))?,
        };
    }
    if let Some(res) = &d.resources {
        let limits = |r: &mut Resolver<'_>, l: &Option<Limits>| -> Result<[Option<u64>; 3], ParseError> {
            let Some(l) = l else { return Ok([None; 3]) };
            Ok([
                opt(r, &l.cpus, |r, v| unit(r, v, "cpus", units::cpus))?,
                opt(r, &l.memory, |r, v| unit(r, v, "memory", units::bytes))?,
                opt(r, &l.pids, |r, v| r.number(v, "pids"))?,
            ])
        };
        let [limit_nano_cpus, limit_memory, limit_pids] = limits(r, &res.limits)?;
        let [reserve_nano_cpus, reserve_memory, reserve_pids] = limits(r, &res.reservations)?;
        if let (Some(_), Some(l)) = (reserve_pids, res.reservations.as_ref().and_then(|l| l.pids.as_ref())) {
            return Err(r.error(&l.defined, "pids can only be limited, not reserved: move it to limits"));
        }
        def.resources =
            ResourcesDef { limit_nano_cpus, limit_memory, limit_pids, reserve_nano_cpus, reserve_memory };
    }
    if let Some(p) = &d.placement {
        if !p.constraints.is_empty() {
            def.constraints = Some(p.constraints.iter().map(|c| r.text(c)).collect::<Result<_, _>>()?);
        }
        if !p.preferences.is_empty() {
            let mut keys = Vec::new();
            for pref in &p.preferences {
                let text = r.text(&pref.spread)?;
                match text.strip_prefix("node.labels.").filter(|k| !k.is_empty()) {
                    Some(key) => keys.push(key.to_owned()),
                    None => {
                        return Err(r.error(
                            &pref.spread.defined,
                            format!("spread {text:?} is not supported: use node.labels.KEY"),
                        ));
                    }
                }
            }
            def.spread = Some(keys);
        }
        def.max_replicas_per_node =
            opt(r, &p.max_replicas_per_node, |r, v| r.number(v, "max_replicas_per_node"))?;
    }
    Ok(())
}

fn resolve_update(
    u: &model::UpdateConfig,
    r: &mut Resolver<'_>,
    actions: &[&str],
) -> Result<UpdateDef, ParseError> {
    Ok(UpdateDef {
        parallelism: opt(r, &u.parallelism, |r, v| r.number(v, "parallelism"))?,
        delay_ms: opt(r, &u.delay, |r, v| unit(r, v, "delay", units::duration_ms))?,
        failure_action: opt(r, &u.failure_action, |r, v| one_of(r, v, "failure_action", actions))?,
        monitor_ms: opt(r, &u.monitor, |r, v| unit(r, v, "monitor", units::duration_ms))?,
        max_failure_ratio: opt(r, &u.max_failure_ratio, |r, v| {
            unit(r, v, "max_failure_ratio", units::ratio)
        })?,
        order: opt(r, &u.order, |r, v| one_of(r, v, "order", &["stop-first", "start-first"]))?,
    })
}

fn resolve_health(h: &Healthcheck, r: &mut Resolver<'_>) -> Result<HealthDef, ParseError> {
    let mut def = HealthDef {
        interval_ms: opt(r, &h.interval, |r, v| unit(r, v, "interval", units::duration_ms))?,
        timeout_ms: opt(r, &h.timeout, |r, v| unit(r, v, "timeout", units::duration_ms))?,
        retries: opt(r, &h.retries, |r, v| r.number(v, "retries"))?,
        start_period_ms: opt(r, &h.start_period, |r, v| unit(r, v, "start_period", units::duration_ms))?,
        disabled: opt(r, &h.disable, |r, v| r.boolean(v, "disable"))?.unwrap_or(false),
        command: None,
    };
    if let Some(test) = &h.test {
        let at = &test.defined;
        // `test: curl -f localhost` is CMD-SHELL; a list starts with its kind.
        def.command = match &test.value {
            StringOrList::String(text) => Some(r.expand_at(text, at)?),
            StringOrList::List(items) => {
                let words: Vec<String> =
                    items.iter().map(|i| r.expand_at(i, at)).collect::<Result<_, _>>()?;
                match words.split_first() {
                    Some((kind, rest)) if kind == "CMD-SHELL" && rest.len() == 1 => Some(rest[0].clone()),
                    Some((kind, rest)) if kind == "CMD" && !rest.is_empty() => Some(shell_join(rest)),
                    Some((kind, [])) if kind == "NONE" => {
                        def.disabled = true;
                        None
                    }
                    _ => {
                        return Err(r.error(
                            at,
                            "healthcheck test must be a string, [\"CMD\", program, args...], [\"CMD-SHELL\", command] or [\"NONE\"]",
                        ));
                    }
                }
            }
        };
    }
    Ok(def)
}

/// Words as one shell command line, each quoted when it needs it.
fn shell_join(words: &[String]) -> String {
    let quote = |w: &String| {
        if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c)) {
            w.clone()
        } else {
            format!("'{}'", w.replace('\'', r"'\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

impl Stack {
    /// `self` with `over` (a later `-c` file) merged in, as docker merges:
    /// a service's values set in `over` replace `self`'s; maps
    /// (`environment`, `labels`, `networks`) merge by key; `ports` merge by
    /// published port and protocol, and mounts by target; lists otherwise
    /// replace. Networks and volumes merge by name, `over`'s winning.
    pub fn merge(mut self, over: Stack) -> Stack {
        for (name, o) in over.services {
            let merged = match self.services.remove(&name) {
                None => o,
                Some(base) => base.merge(o),
            };
            self.services.insert(name, merged);
        }
        self.networks.extend(over.networks);
        self.volumes.extend(over.volumes);
        self
    }

    /// Checks what the services refer to: networks and volumes declared at
    /// the top level, services they depend on, and no dependency cycle.
    pub fn check(&self, file: &str) -> Result<(), ParseError> {
        for (name, s) in &self.services {
            let fail = |message: String| match &s.at {
                Some(at) => at.error(message),
                None => ParseError { file: file.to_owned(), line: 0, column: 0, message },
            };
            if s.image.is_none() {
                return Err(fail(format!(
                    "service {name:?} has neither an image nor a build context specified: set image to the program to run"
                )));
            }
            for network in s.networks.iter().flat_map(|n| n.keys()) {
                if network != "default" && !self.networks.contains_key(network) {
                    return Err(fail(format!(
                        "service {name:?} refers to undefined network {network}: invalid compose project"
                    )));
                }
            }
            for m in &s.mounts {
                if m.kind == mounts::MountKind::Volume
                    && !m.source.is_empty()
                    && !self.volumes.contains_key(&m.source)
                {
                    return Err(fail(format!(
                        "service {name:?} refers to undefined volume {}: invalid compose project",
                        m.source
                    )));
                }
            }
            for dep in s.depends_on.keys() {
                if !self.services.contains_key(dep) {
                    return Err(fail(format!(
                        "service {name:?} depends on undefined service {dep:?}: invalid compose project"
                    )));
                }
            }
        }
        if let Some(cycle) = self.dependency_cycle() {
            return Err(ParseError {
                file: file.to_owned(),
                line: 0,
                column: 0,
                message: format!("dependency cycle detected: {}", cycle.join(" -> ")),
            });
        }
        Ok(())
    }

    /// The services in an order that starts dependencies first (then by
    /// name).
    pub fn start_order(&self) -> Vec<&str> {
        let mut done: Vec<&str> = Vec::new();
        while done.len() < self.services.len() {
            let before = done.len();
            for (name, s) in &self.services {
                if !done.contains(&name.as_str())
                    && s.depends_on
                        .keys()
                        .all(|d| done.contains(&d.as_str()) || !self.services.contains_key(d))
                {
                    done.push(name);
                }
            }
            if done.len() == before {
                // A cycle (refused by `check`): the rest by name.
                done.extend(
                    self.services
                        .keys()
                        .map(String::as_str)
                        .filter(|n| !done.contains(n))
                        .collect::<Vec<_>>(),
                );
            }
        }
        done
    }

    fn dependency_cycle(&self) -> Option<Vec<String>> {
        fn visit<'a>(stack: &'a Stack, name: &'a str, path: &mut Vec<&'a str>) -> Option<Vec<String>> {
            if let Some(i) = path.iter().position(|n| *n == name) {
                let mut cycle: Vec<String> = path[i..].iter().map(|n| n.to_string()).collect();
                cycle.push(name.to_owned());
                return Some(cycle);
            }
            path.push(name);
            for dep in stack.services.get(name).into_iter().flat_map(|s| s.depends_on.keys()) {
                if let Some(cycle) = visit(stack, dep, path) {
                    return Some(cycle);
                }
            }
            path.pop();
            None
        }
        self.services.keys().find_map(|name| visit(self, name, &mut Vec::new()))
    }
}

impl ServiceDef {
    /// The networks the service joins, by key, with their aliases: the
    /// stack's `default` network when the file names none.
    pub fn attached_networks(&self) -> BTreeMap<String, Vec<String>> {
        self.networks.clone().unwrap_or_else(|| BTreeMap::from([("default".to_owned(), Vec::new())]))
    }

    fn merge(self, o: ServiceDef) -> ServiceDef {
        let mut environment = self.environment;
        environment.extend(o.environment);
        let mut labels = self.labels;
        labels.extend(o.labels);
        let networks = match (self.networks, o.networks) {
            (Some(mut base), Some(over)) => {
                base.extend(over);
                Some(base)
            }
            (base, over) => over.or(base),
        };
        let mut ports = self.ports;
        for p in o.ports {
            ports.retain(|q| (q.published, &q.protocol) != (p.published, &p.protocol) || p.published == 0);
            ports.push(p);
        }
        let mut mounts = self.mounts;
        for m in o.mounts {
            mounts.retain(|q| q.target != m.target);
            mounts.push(m);
        }
        let mut depends_on = self.depends_on;
        depends_on.extend(o.depends_on);
        let mut env_files = self.env_files;
        env_files.extend(o.env_files);
        ServiceDef {
            at: o.at.or(self.at),
            image: o.image.or(self.image),
            command: o.command.or(self.command),
            entrypoint: o.entrypoint.or(self.entrypoint),
            environment,
            env_files,
            ports,
            networks,
            mode: o.mode.or(self.mode),
            replicas: o.replicas.or(self.replicas),
            labels,
            endpoint_mode: o.endpoint_mode.or(self.endpoint_mode),
            update: self.update.merge(o.update),
            rollback: self.rollback.merge(o.rollback),
            restart: RestartDef {
                condition: o.restart.condition.or(self.restart.condition),
                delay_ms: o.restart.delay_ms.or(self.restart.delay_ms),
                max_attempts: o.restart.max_attempts.or(self.restart.max_attempts),
                window_ms: o.restart.window_ms.or(self.restart.window_ms),
            },
            resources: ResourcesDef {
                limit_nano_cpus: o.resources.limit_nano_cpus.or(self.resources.limit_nano_cpus),
                limit_memory: o.resources.limit_memory.or(self.resources.limit_memory),
                limit_pids: o.resources.limit_pids.or(self.resources.limit_pids),
                reserve_nano_cpus: o.resources.reserve_nano_cpus.or(self.resources.reserve_nano_cpus),
                reserve_memory: o.resources.reserve_memory.or(self.resources.reserve_memory),
            },
            constraints: o.constraints.or(self.constraints),
            spread: o.spread.or(self.spread),
            max_replicas_per_node: o.max_replicas_per_node.or(self.max_replicas_per_node),
            healthcheck: match (self.healthcheck, o.healthcheck) {
                (Some(base), Some(over)) => Some(HealthDef {
                    command: over.command.or(base.command),
                    disabled: over.disabled,
                    interval_ms: over.interval_ms.or(base.interval_ms),
                    timeout_ms: over.timeout_ms.or(base.timeout_ms),
                    retries: over.retries.or(base.retries),
                    start_period_ms: over.start_period_ms.or(base.start_period_ms),
                }),
                (base, over) => over.or(base),
            },
            stop_grace_ms: o.stop_grace_ms.or(self.stop_grace_ms),
            stop_signal: o.stop_signal.or(self.stop_signal),
            working_dir: o.working_dir.or(self.working_dir),
            user: o.user.or(self.user),
            hostname: o.hostname.or(self.hostname),
            mounts,
            depends_on,
        }
    }
}

impl UpdateDef {
    fn merge(self, o: UpdateDef) -> UpdateDef {
        UpdateDef {
            parallelism: o.parallelism.or(self.parallelism),
            delay_ms: o.delay_ms.or(self.delay_ms),
            failure_action: o.failure_action.or(self.failure_action),
            monitor_ms: o.monitor_ms.or(self.monitor_ms),
            max_failure_ratio: o.max_failure_ratio.or(self.max_failure_ratio),
            order: o.order.or(self.order),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Vars, parse};

    fn load(name: &str, text: &str, vars: &[(&str, &str)]) -> Result<Stack, ParseError> {
        let vars = Vars::new(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())), []);
        let file = parse(name, text)?;
        resolve(&file, &mut Resolver::new(name, &vars))
    }

    const BASE: &str = r#"
version: "3.9"
services:
  web:
    image: python3
    command: app.py --port ${PORT:-8000}
    environment:
      REDIS_HOST: redis
      DEBUG: "1"
    ports:
      - "${PORT:-8000}:8000"
    depends_on: [redis]
    deploy:
      replicas: ${REPLICAS}
      labels: {tier: front}
      update_config: {parallelism: 2, delay: 1s, order: start-first}
      restart_policy: {condition: on-failure, delay: 500ms}
      resources: {limits: {cpus: "0.5", memory: 64M, pids: 100}}
      placement: {constraints: [node.role == worker], preferences: [{spread: node.labels.zone}]}
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost:8000/"]
      interval: 2s
  redis:
    image: redis-server
    volumes: [data:/var/lib/redis]
    healthcheck:
      test: redis-cli ping
volumes:
  data: {}
"#;

    #[test]
    fn a_file_resolves_with_its_variables() {
        let stack = load("a.yml", BASE, &[("REPLICAS", "3")]).unwrap();
        let web = &stack.services["web"];
        assert_eq!(web.command.as_deref().unwrap(), ["app.py", "--port", "8000"]);
        assert_eq!((web.replicas, web.ports[0].published, web.ports[0].target), (Some(3), 8000, 8000));
        assert_eq!(web.labels["tier"], "front");
        assert_eq!(web.update.order.as_deref(), Some("start-first"));
        assert_eq!((web.update.parallelism, web.update.delay_ms), (Some(2), Some(1000)));
        assert_eq!((web.restart.condition.as_deref(), web.restart.delay_ms), (Some("on-failure"), Some(500)));
        assert_eq!(
            (web.resources.limit_nano_cpus, web.resources.limit_memory, web.resources.limit_pids),
            (Some(500_000_000), Some(64 << 20), Some(100))
        );
        assert_eq!(web.spread.as_deref().unwrap(), ["zone"]);
        let health = web.healthcheck.as_ref().unwrap();
        assert_eq!(health.command.as_deref(), Some("curl -f http://localhost:8000/"));
        assert_eq!(health.interval_ms, Some(2000));
        assert_eq!(web.depends_on, BTreeMap::from([("redis".to_owned(), false)]));
        let redis = &stack.services["redis"];
        assert_eq!(redis.mounts[0].source, "data");
        assert_eq!(redis.healthcheck.as_ref().unwrap().command.as_deref(), Some("redis-cli ping"));
        stack.check("a.yml").unwrap();
        assert_eq!(stack.start_order(), ["redis", "web"]);
    }

    #[test]
    fn a_later_file_overrides_and_merges_by_key() {
        let base = load("a.yml", BASE, &[("REPLICAS", "3")]).unwrap();
        let over = load(
            "b.yml",
            r#"
services:
  web:
    environment: {DEBUG: "0", EXTRA: x}
    ports: ["8000:8080", "9000:9000"]
    deploy:
      replicas: 5
      update_config: {parallelism: 1}
  cache:
    image: memcached
networks:
  back: {attachable: true}
"#,
            &[],
        )
        .unwrap();
        let merged = base.merge(over);
        let web = &merged.services["web"];
        assert_eq!(web.replicas, Some(5));
        assert_eq!(web.environment["DEBUG"].as_deref(), Some("0"));
        assert_eq!(web.environment["REDIS_HOST"].as_deref(), Some("redis"));
        assert_eq!(web.environment["EXTRA"].as_deref(), Some("x"));
        let ports: Vec<(u16, u16)> = web.ports.iter().map(|p| (p.published, p.target)).collect();
        assert_eq!(ports, [(8000, 8080), (9000, 9000)], "ports merge by published port");
        assert_eq!(web.update.parallelism, Some(1));
        assert_eq!(web.update.order.as_deref(), Some("start-first"), "unset fields keep the base's");
        assert_eq!(web.command.as_deref().unwrap()[0], "app.py");
        assert!(merged.services.contains_key("cache") && merged.networks["back"].attachable);
    }

    #[test]
    fn wrong_values_point_at_where_they_were_written() {
        let err = |text: &str, vars: &[(&str, &str)]| load("c.yml", text, vars).unwrap_err();
        let e = err("services:\n  web:\n    image: x\n    ports: [\"80:http\"]\n", &[]);
        assert_eq!((e.line, e.column), (4, 13), "{e}");
        assert!(e.message.starts_with("invalid port \"80:http\""), "{e}");
        let e = err(
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: ${N:?set N to the replicas}\n",
            &[],
        );
        assert_eq!((e.line, e.column), (5, 17), "{e}");
        assert!(e.message.contains("set N to the replicas"), "{e}");
        let e = err("services:\n  web:\n    image: x\n    deploy:\n      replicas: many\n", &[]);
        assert_eq!(e.message, "replicas must be a number, not \"many\"");
        let e = err("services:\n  web:\n    image: x\n    deploy:\n      mode: daemon\n", &[]);
        assert!(e.message.contains("must be one of replicated, global"), "{e}");
        let e = err("services:\n  web:\n    image: x\n    stop_grace_period: soon\n", &[]);
        assert_eq!(e.line, 4, "{e}");
        let e = err("services:\n  web:\n    image: x\n    volumes: [\"bad name!:/data\"]\n", &[]);
        assert_eq!(e.line, 4, "{e}");
        let e = err("services:\n  web:\n    image: x\nnetworks:\n  n:\n    driver: bridge\n", &[]);
        assert_eq!((e.line, e.column), (6, 13), "{e}");
    }

    /// Runs the whole pipeline on `text`: any outcome but a panic is fine.
    fn pipeline(text: &str) {
        let vars = Vars::new([("REPLICAS".to_owned(), "2".to_owned())], []);
        let Ok(file) = parse("p.yml", text) else { return };
        let Ok(stack) = resolve(&file, &mut Resolver::new("p.yml", &vars)) else { return };
        let _ = stack.check("p.yml");
        let _ = stack.start_order();
        let _ = stack.clone().merge(stack);
    }

    proptest::proptest! {
        /// A valid file with a few characters put anywhere (which breaks its
        /// indentation, keys, values, quotes) reads, or is refused, but
        /// never panics.
        #[test]
        fn mutated_files_never_panic(at in 0usize..BASE.len(), insert in ".{0,6}", cut in proptest::bool::ANY) {
            let at = (0..=at).rev().find(|i| BASE.is_char_boundary(*i)).unwrap_or(0);
            let text = if cut { BASE[..at].to_owned() } else { format!("{}{insert}{}", &BASE[..at], &BASE[at..]) };
            pipeline(&text);
        }

        /// So does any short text.
        #[test]
        fn any_text_never_panics(text in ".{0,80}") {
            pipeline(&text);
        }
    }

    #[test]
    fn references_are_checked_after_merging() {
        let check = |text: &str| load("d.yml", text, &[]).unwrap().check("d.yml").unwrap_err();
        let e = check("services:\n  web:\n    image: x\n    networks: [front]\n");
        assert_eq!(e.message, "service \"web\" refers to undefined network front: invalid compose project");
        assert_eq!(e.line, 3, "the service's position: {e}");
        let e = check("services:\n  web:\n    image: x\n    volumes: [\"data:/srv\"]\n");
        assert!(e.message.contains("refers to undefined volume data"), "{e}");
        let e = check("services:\n  web:\n    image: x\n    depends_on: [db]\n");
        assert!(e.message.contains("depends on undefined service \"db\""), "{e}");
        let e = check(
            "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [a]\n",
        );
        assert_eq!(e.message, "dependency cycle detected: a -> b -> a");
        let e = check("services:\n  web:\n    build: .\n");
        assert!(e.message.contains("has neither an image nor a build context"), "{e}");
    }
}
