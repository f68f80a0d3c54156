//! `shoal service ...`: the verbs, flags and output Swarm users know.

mod progress;
mod spec;
mod views;

use std::io::Write;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_agent::api::views as api;
use shoal_orch::{Mode, ServiceSpec};

pub use spec::{CreateOptions, UpdateOptions, check_env, read_env_file, set_env};
pub use views::{ls, ps};

use super::client::Client;
use super::{Format, out, print_json};

/// `shoal service`.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a new service
    Create(Box<CreateOptions>),
    /// List services
    Ls(LsOptions),
    /// List the tasks of one or more services
    Ps {
        #[command(flatten)]
        options: PsOptions,
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

/// The options of `service ls` and `stack services`.
#[derive(Debug, Args)]
pub struct LsOptions {
    /// Filter output (id=ID, name=NAME, label=KEY[=VALUE], mode=replicated|global)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Only display IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, json (one object per line), or a template such as '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: Format,
}

/// The options of `service ps` and `stack ps`.
#[derive(Debug, Args)]
pub struct PsOptions {
    /// Do not truncate output
    #[arg(long)]
    pub no_trunc: bool,
    /// Filter output (desired-state=running|shutdown|accepted, name=..., node=...)
    #[arg(short, long)]
    pub filter: Vec<String>,
    /// Only display task IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, json (one object per line), or a template such as '{{.Name}}'
    #[arg(long, default_value = "table")]
    pub format: Format,
}

/// Runs a `service` verb.
pub fn run(client: &Client, command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::Create(o) => {
            let spec = spec::create_spec(&o)?;
            let answer = client.call(
                "POST",
                "/v1/services",
                Some(&serde_json::to_value(api::ServiceSpec::from(&spec))?),
            )?;
            let id = answer["ID"].as_str().unwrap_or_default().to_owned();
            writeln!(out(), "{id}")?;
            if !o.spec.detach {
                progress::converge(client, &id, o.spec.quiet)?;
            }
            Ok(())
        }
        ServiceCommand::Ls(options) => views::ls(client, &options, None),
        ServiceCommand::Ps { options, services } => views::ps(client, &services, &options),
        ServiceCommand::Inspect { pretty, services } => {
            let all: Vec<api::Service> = services
                .iter()
                .map(|s| client.get(&format!("/v1/services/{s}")))
                .collect::<Result<_, _>>()?;
            if pretty { views::pretty(&all) } else { print_json(&all) }
        }
        ServiceCommand::Scale { detach, scales } => scale(client, &scales, detach),
        ServiceCommand::Update(o) => update(client, *o),
        ServiceCommand::Rollback { detach, quiet, service } => rollback(client, &service, detach, quiet),
        ServiceCommand::Logs { follow, tail, timestamps, no_task_ids, service } => {
            views::logs(client, &service, follow, tail, timestamps, no_task_ids)
        }
        ServiceCommand::Rm { services } => {
            super::remove_each(client, &services, |name| format!("/v1/services/{name}"), "services")
        }
    }
}

/// A service's id, version and spec.
fn get_service(client: &Client, name: &str) -> anyhow::Result<(String, u64, ServiceSpec)> {
    let service: api::Service = client.get(&format!("/v1/services/{name}"))?;
    let spec =
        ServiceSpec::try_from(&service.spec).context("the manager sent a spec this CLI cannot read")?;
    Ok((service.id, service.version.index, spec))
}

/// Sends a new spec for the service `id`, read at `version`.
fn put_spec(client: &Client, id: &str, version: u64, spec: &ServiceSpec) -> anyhow::Result<()> {
    let body = serde_json::to_value(api::ServiceSpec::from(spec))?;
    client.call("POST", &format!("/v1/services/{id}/update?version={version}"), Some(&body))?;
    Ok(())
}

fn rollback(client: &Client, service: &str, detach: bool, quiet: bool) -> anyhow::Result<()> {
    let answer: api::Service =
        client.post(&format!("/v1/services/{service}/rollback"), &serde_json::Value::Null)?;
    writeln!(out(), "{service}")?;
    if !detach {
        writeln!(out(), "rollback: manually requested rollback")?;
        progress::converge(client, &answer.id, quiet)?;
    }
    Ok(())
}

fn update(client: &Client, o: UpdateOptions) -> anyhow::Result<()> {
    if o.rollback {
        return rollback(client, &o.service, o.spec.detach, o.spec.quiet);
    }
    let (id, version, mut spec) = get_service(client, &o.service)?;
    spec::update_spec(&mut spec, &o)?;
    put_spec(client, &id, version, &spec)?;
    writeln!(out(), "{}", o.service)?;
    if !o.spec.detach {
        progress::converge(client, &id, o.spec.quiet)?;
    }
    Ok(())
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
        let (id, version, mut spec) = get_service(client, &name)?;
        if spec.mode == Mode::Global {
            bail!("{name}: scale can only be used with replicated mode");
        }
        spec.mode = Mode::Replicated { replicas };
        put_spec(client, &id, version, &spec)?;
        writeln!(out(), "{name} scaled to {replicas}")?;
        ids.push(id);
    }
    if !detach {
        for id in ids {
            progress::converge(client, &id, false)?;
        }
    }
    Ok(())
}
