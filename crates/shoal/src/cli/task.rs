//! `shoal task exec|inspect`.

use anyhow::Context;
use clap::Subcommand;
use shoal_agent::api::views::Task;

use super::client::Client;
use super::print_json;
use super::service::{check_env, set_env};

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
    /// Display detailed information on one or more tasks
    Inspect {
        /// Task ids (or unique prefixes)
        #[arg(required = true)]
        tasks: Vec<String>,
    },
}

/// Runs a `task` verb.
pub fn run(client: &Client, command: TaskCommand) -> anyhow::Result<()> {
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
            use std::os::unix::process::CommandExt;
            let e = std::process::Command::new("/proc/self/exe")
                .arg("__enter")
                .arg(serde_json::to_string(&enter)?)
                .exec();
            Err(e).context("run the command in the task")
        }
        TaskCommand::Inspect { tasks } => {
            // As `docker inspect`: every task found, then an error naming
            // those that were not.
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for id in &tasks {
                match client.get::<Task>(&format!("/v1/tasks/{id}")) {
                    Ok(task) => found.push(task),
                    Err(e) => missing.push(format!("{e:#}")),
                }
            }
            print_json(&found)?;
            match missing.len() {
                0 => Ok(()),
                _ => anyhow::bail!("{}", missing.join("; ")),
            }
        }
    }
}
