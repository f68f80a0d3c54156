//! `shoal volume create|ls|inspect|rm`: the volumes of the node the CLI
//! talks to, as docker's local volumes.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::bail;
use clap::Subcommand;
use serde::Serialize;
use shoal_agent::api::views::{Volume, VolumeCreate, VolumeList};

use super::client::Client;
use super::{Format, Listing, out, print_json};

/// `shoal volume`.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume
    Create {
        /// Specify volume driver name
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// Set metadata for a volume (KEY=VALUE)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Volume name (default: 64 random hex digits)
        name: Option<String>,
    },
    /// List volumes
    Ls {
        /// Only display volume names
        #[arg(short, long)]
        quiet: bool,
        /// Output format: table, json (one object per line), or a template such as '{{.Name}}'
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on one or more volumes
    Inspect {
        /// Volume names
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove one or more volumes (a volume a running task mounts is kept)
    Rm {
        /// Taken for docker's sake: a volume in use is never removed
        #[arg(short, long)]
        force: bool,
        /// Volume names
        #[arg(required = true)]
        volumes: Vec<String>,
    },
}

/// A `volume ls` row, with the field names of `docker volume ls --format`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct Row {
    driver: String,
    labels: String,
    links: String,
    mountpoint: String,
    name: String,
    scope: String,
    size: String,
}

impl From<&Volume> for Row {
    fn from(v: &Volume) -> Row {
        let labels: Vec<String> = v.labels.iter().map(|(k, val)| format!("{k}={val}")).collect();
        Row {
            driver: v.driver.clone(),
            labels: labels.join(","),
            links: "N/A".into(),
            mountpoint: v.mountpoint.clone(),
            name: v.name.clone(),
            scope: v.scope.clone(),
            size: "N/A".into(),
        }
    }
}

/// The `volume ls` table's headers and cells. Docker's table writer makes
/// every column at least 10 characters wide; the driver column is the only
/// one short enough to show it, so it is padded to match docker's output.
const HEADERS: &[&str] = &["DRIVER ", "VOLUME NAME"];

/// See [`HEADERS`].
fn cells(r: &Row) -> Vec<String> {
    vec![format!("{:<7}", r.driver), r.name.clone()]
}

/// Runs a `volume` verb.
pub fn run(client: &Client, command: VolumeCommand) -> anyhow::Result<()> {
    match command {
        VolumeCommand::Create { driver, labels, name } => {
            let body = VolumeCreate {
                name: name.unwrap_or_default(),
                driver,
                driver_opts: BTreeMap::new(),
                labels: super::parse_labels(&labels),
            };
            let volume: Volume = client.post("/v1/volumes", &body)?;
            writeln!(out(), "{}", volume.name)?;
        }
        VolumeCommand::Ls { quiet, format } => {
            let list: VolumeList = client.get("/v1/volumes")?;
            if quiet {
                for v in &list.volumes {
                    writeln!(out(), "{}", v.name)?;
                }
                return Ok(());
            }
            let rows = list.volumes.iter().map(Row::from).collect();
            Listing { rows, headers: HEADERS, cells }.print(&format)?;
        }
        VolumeCommand::Inspect { volumes } => inspect(client, &volumes)?,
        VolumeCommand::Rm { force, volumes } => super::remove_each(
            client,
            &volumes,
            |name| format!("/v1/volumes/{name}?force={force}"),
            "volumes",
        )?,
    }
    Ok(())
}

/// Prints the volumes found as a JSON array, then fails naming each
/// missing one, as `docker volume inspect` does.
fn inspect(client: &Client, names: &[String]) -> anyhow::Result<()> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match client.get::<Volume>(&format!("/v1/volumes/{name}")) {
            Ok(v) => found.push(v),
            Err(e) if e.to_string().ends_with(": no such volume") => missing.push(name.as_str()),
            Err(e) => return Err(e),
        }
    }
    print_json(&found)?;
    if !missing.is_empty() {
        let lines: Vec<String> = missing.iter().map(|n| format!("No such volume: {n}")).collect();
        bail!("{}", lines.join("\nError: "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_reads_like_dockers() {
        let volume = Volume {
            created_at: String::new(),
            driver: "local".into(),
            labels: BTreeMap::from([("app".into(), "db".into())]),
            mountpoint: "/var/lib/shoal/volumes/data/_data".into(),
            name: "data".into(),
            options: BTreeMap::new(),
            scope: "local".into(),
        };
        let row = Row::from(&volume);
        let header: Vec<String> = HEADERS.iter().map(|h| (*h).to_owned()).collect();
        let text = super::super::table(&[header.clone(), cells(&row)]);
        assert_eq!(text, "DRIVER    VOLUME NAME\nlocal     data\n");
        assert_eq!(super::super::table(&[header]), "DRIVER    VOLUME NAME\n", "without volumes too");
        assert_eq!(row.labels, "app=db");
        assert_eq!(
            crate::cli::parse_labels(&["a=1".into(), "b".into()]),
            BTreeMap::from([("a".to_owned(), "1".to_owned()), ("b".to_owned(), String::new())])
        );
    }
}
