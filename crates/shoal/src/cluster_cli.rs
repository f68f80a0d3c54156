//! `shoal swarm ...` and `shoal node ...`: the verbs and output Swarm users
//! know, over the local API.

use std::io::Write;

use clap::Subcommand;

use crate::client::Client;

/// `shoal swarm`.
#[derive(Debug, Subcommand)]
pub enum SwarmCommand {
    /// Create a swarm with this node as its manager
    Init {
        /// Address other nodes reach this one at (must be the daemon's)
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Address to listen on (must be the daemon's)
        #[arg(long)]
        listen_addr: Option<String>,
        /// Address pool networks are carved from
        #[arg(long, default_value = "10.0.0.0/8")]
        default_addr_pool: String,
        /// VXLAN port (must be the daemon's)
        #[arg(long)]
        data_path_port: Option<u16>,
        /// Time between heartbeats (such as 5s); a node is Down after three missed
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        dispatcher_heartbeat: u64,
        /// Validity of node certificates (such as 90d or 2160h); nodes renew at 50-80 %
        #[arg(long, default_value = "90d", value_parser = parse_duration)]
        cert_expiry: u64,
    },
    /// Join a swarm as a node
    Join {
        /// Token from `shoal swarm join-token`
        #[arg(long)]
        token: String,
        /// A manager's address, IP:PORT (port 2377 if left out)
        remote_addr: String,
    },
    /// Manage join tokens
    JoinToken {
        /// Only print the token
        #[arg(short, long)]
        quiet: bool,
        /// Replace the token; the old one stops working
        #[arg(long)]
        rotate: bool,
        /// worker or manager
        role: String,
    },
    /// Leave the swarm
    Leave {
        /// Leave even as the manager (the swarm's state is lost)
        #[arg(short, long)]
        force: bool,
    },
}

/// `shoal network`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network
    Create {
        /// Driver: overlay
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form (default: the next free /24 of the swarm's pool)
        #[arg(long)]
        subnet: Option<String>,
        /// Let standalone tasks attach
        #[arg(long)]
        attachable: bool,
        /// Network name
        name: String,
    },
    /// List networks
    Ls {
        /// `table` (default) or `json`
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Display detailed information on one or more networks
    Inspect {
        /// Network names or ids
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Remove one or more networks
    Rm {
        /// Network names or ids
        #[arg(required = true)]
        networks: Vec<String>,
    },
}

/// Runs a `network` verb.
pub fn network(client: &Client, command: NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create { driver, subnet, attachable, name } => {
            let body = serde_json::json!({ "name": name, "driver": driver, "subnet": subnet, "attachable": attachable });
            let answer = client.call("POST", "/v1/networks", Some(&body))?;
            writeln!(out(), "{}", answer["Id"].as_str().unwrap_or(""))?;
        }
        NetworkCommand::Ls { format } => {
            let list = client.call("GET", "/v1/networks", None)?.as_array().cloned().unwrap_or_default();
            match format.as_str() {
                "json" => {
                    for n in &list {
                        writeln!(out(), "{n}")?;
                    }
                }
                "table" => {
                    let mut rows = vec![["NETWORK ID", "NAME", "DRIVER", "SCOPE"].map(String::from).to_vec()];
                    for n in &list {
                        let id: String = n["Id"].as_str().unwrap_or("").chars().take(12).collect();
                        rows.push(vec![
                            id,
                            n["Name"].as_str().unwrap_or("").into(),
                            n["Driver"].as_str().unwrap_or("").into(),
                            n["Scope"].as_str().unwrap_or("").into(),
                        ]);
                    }
                    write!(out(), "{}", table(&rows))?;
                }
                other => anyhow::bail!("unknown format {other:?}: use table or json"),
            }
        }
        NetworkCommand::Inspect { networks } => {
            let mut all = Vec::new();
            for name in &networks {
                all.push(client.call("GET", &format!("/v1/networks/{name}"), None)?);
            }
            let mut o = out();
            serde_json::to_writer_pretty(&mut o, &serde_json::Value::Array(all))?;
            writeln!(o)?;
        }
        NetworkCommand::Rm { networks } => {
            for name in &networks {
                client.call("DELETE", &format!("/v1/networks/{name}"), None)?;
                writeln!(out(), "{name}")?;
            }
        }
    }
    Ok(())
}

/// `shoal node`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes in the swarm
    Ls {
        /// `table` (default) or `json`
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Display detailed information on one or more nodes
    Inspect {
        /// Print in a human-friendly format
        #[arg(long)]
        pretty: bool,
        /// Node ids, id prefixes or hostnames
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node
    Update {
        /// Add or update a node label (KEY or KEY=VALUE)
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a node label
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// active, pause or drain
        #[arg(long)]
        availability: Option<String>,
        /// Node id, id prefix or hostname
        node: String,
    },
    /// Promote one or more nodes to manager
    Promote {
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote one or more nodes from manager
    Demote {
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove one or more nodes from the swarm
    Rm {
        /// Remove even if the node is not down
        #[arg(short, long)]
        force: bool,
        /// Nodes
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Parses a duration such as `5s`, `10m`, `2160h` or `90d` (a bare number
/// is seconds) into seconds.
fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {text:?}: use a number with s, m, h or d, such as 90d or 5s");
    let (number, unit) = text.find(|c: char| !c.is_ascii_digit()).map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).filter(|s| *s > 0).ok_or_else(bad)
}

fn out() -> std::io::StdoutLock<'static> {
    std::io::stdout().lock()
}

/// Runs a `swarm` verb.
pub fn swarm(client: &Client, command: SwarmCommand) -> anyhow::Result<()> {
    match command {
        SwarmCommand::Init {
            advertise_addr,
            listen_addr,
            default_addr_pool,
            data_path_port,
            dispatcher_heartbeat,
            cert_expiry,
        } => {
            let body = serde_json::json!({
                "advertise_addr": advertise_addr, "listen_addr": listen_addr, "default_addr_pool": default_addr_pool,
                "data_path_port": data_path_port, "dispatcher_heartbeat_secs": dispatcher_heartbeat,
                "cert_expiry_secs": cert_expiry,
            });
            let answer = client.call("POST", "/v1/swarm/init", Some(&body))?;
            let mut o = out();
            writeln!(
                o,
                "Swarm initialized: current node ({}) is now a manager.\n",
                answer["node_id"].as_str().unwrap_or("")
            )?;
            writeln!(o, "To add a worker to this swarm, run the following command:\n")?;
            writeln!(
                o,
                "    shoal swarm join --token {} {}\n",
                answer["worker_token"].as_str().unwrap_or(""),
                answer["addr"].as_str().unwrap_or("")
            )?;
            writeln!(
                o,
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions."
            )?;
        }
        SwarmCommand::Join { token, remote_addr } => {
            let body = serde_json::json!({ "token": token, "remote_addr": remote_addr });
            let answer = client.call("POST", "/v1/swarm/join", Some(&body))?;
            writeln!(
                out(),
                "This node joined a swarm as a {}.",
                answer["role"].as_str().unwrap_or("worker")
            )?;
        }
        SwarmCommand::JoinToken { quiet, rotate, role } => {
            let path = format!("/v1/swarm/join-token/{role}{}", if rotate { "/rotate" } else { "" });
            let answer = client.call(if rotate { "POST" } else { "GET" }, &path, None)?;
            let token = answer["token"].as_str().unwrap_or("");
            let mut o = out();
            if quiet {
                writeln!(o, "{token}")?;
            } else {
                if rotate {
                    writeln!(o, "Successfully rotated {role} join token.\n")?;
                }
                writeln!(o, "To add a {role} to this swarm, run the following command:\n")?;
                writeln!(
                    o,
                    "    shoal swarm join --token {token} {}\n",
                    answer["addr"].as_str().unwrap_or("")
                )?;
            }
        }
        SwarmCommand::Leave { force } => {
            client.call("POST", "/v1/swarm/leave", Some(&serde_json::json!({ "force": force })))?;
            writeln!(out(), "Node left the swarm.")?;
        }
    }
    Ok(())
}

fn status(node: &serde_json::Value) -> String {
    let state = node["Status"]["State"].as_str().unwrap_or("unknown");
    let mut s = state.to_owned();
    if let Some(first) = s.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    s
}

fn capitalised(value: &serde_json::Value) -> String {
    let mut s = value.as_str().unwrap_or("").to_owned();
    if let Some(first) = s.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    s
}

/// Prints rows as docker does: columns padded to the widest cell, three
/// spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut text = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        text.push_str(line.join("   ").trim_end());
        text.push('\n');
    }
    text
}

/// Runs a `node` verb.
pub fn node(client: &Client, command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Ls { format } => {
            let nodes = client.call("GET", "/v1/nodes", None)?;
            let list = nodes.as_array().cloned().unwrap_or_default();
            match format.as_str() {
                "json" => {
                    for n in &list {
                        writeln!(out(), "{n}")?;
                    }
                }
                "table" => {
                    let mut rows = vec![
                        ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]
                            .map(String::from)
                            .to_vec(),
                    ];
                    for n in &list {
                        let id = format!(
                            "{}{}",
                            n["ID"].as_str().unwrap_or(""),
                            if n["Self"] == true { " *" } else { "" }
                        );
                        let manager = match &n["ManagerStatus"] {
                            serde_json::Value::Null => String::new(),
                            m if m["Leader"] == true => "Leader".into(),
                            _ => "Reachable".into(),
                        };
                        rows.push(vec![
                            id,
                            n["Description"]["Hostname"].as_str().unwrap_or("").into(),
                            status(n),
                            capitalised(&n["Spec"]["Availability"]),
                            manager,
                            n["Description"]["Engine"]["EngineVersion"].as_str().unwrap_or("").into(),
                        ]);
                    }
                    write!(out(), "{}", table(&rows))?;
                }
                other => anyhow::bail!("unknown format {other:?}: use table or json"),
            }
        }
        NodeCommand::Inspect { pretty, nodes } => {
            let mut all = Vec::new();
            for name in &nodes {
                all.push(client.call("GET", &format!("/v1/nodes/{name}"), None)?);
            }
            let mut o = out();
            if pretty {
                for n in &all {
                    writeln!(o, "ID:\t\t\t{}", n["ID"].as_str().unwrap_or(""))?;
                    writeln!(o, "Hostname:\t\t{}", n["Description"]["Hostname"].as_str().unwrap_or(""))?;
                    writeln!(o, "Joined at:\t\t{}", n["CreatedAt"])?;
                    writeln!(o, "Status:")?;
                    writeln!(o, " State:\t\t\t{}", status(n))?;
                    writeln!(o, " Availability:\t\t{}", capitalised(&n["Spec"]["Availability"]))?;
                    writeln!(o, " Address:\t\t{}", n["Status"]["Addr"].as_str().unwrap_or(""))?;
                    if let Some(labels) = n["Spec"]["Labels"].as_object().filter(|l| !l.is_empty()) {
                        writeln!(o, "Labels:")?;
                        for (k, v) in labels {
                            writeln!(o, " - {k}={}", v.as_str().unwrap_or(""))?;
                        }
                    }
                    writeln!(o, "Platform:")?;
                    writeln!(
                        o,
                        " Operating System:\t{}",
                        n["Description"]["Platform"]["OS"].as_str().unwrap_or("")
                    )?;
                    writeln!(
                        o,
                        " Architecture:\t\t{}",
                        n["Description"]["Platform"]["Architecture"].as_str().unwrap_or("")
                    )?;
                    writeln!(o, "Resources:")?;
                    writeln!(
                        o,
                        " CPUs:\t\t\t{}",
                        n["Description"]["Resources"]["NanoCPUs"].as_u64().unwrap_or(0) / 1_000_000_000
                    )?;
                    writeln!(
                        o,
                        " Memory:\t\t{} MiB",
                        n["Description"]["Resources"]["MemoryBytes"].as_u64().unwrap_or(0) >> 20
                    )?;
                    writeln!(
                        o,
                        "Engine Version:\t\t{}",
                        n["Description"]["Engine"]["EngineVersion"].as_str().unwrap_or("")
                    )?;
                }
            } else {
                serde_json::to_writer_pretty(&mut o, &serde_json::Value::Array(all))?;
                writeln!(o)?;
            }
        }
        NodeCommand::Update { label_add, label_rm, availability, node } => {
            let body = serde_json::json!({ "label_add": label_add, "label_rm": label_rm, "availability": availability });
            client.call("POST", &format!("/v1/nodes/{node}/update"), Some(&body))?;
            writeln!(out(), "{node}")?;
        }
        NodeCommand::Promote { nodes } => role_change(client, &nodes, "manager")?,
        NodeCommand::Demote { nodes } => role_change(client, &nodes, "worker")?,
        NodeCommand::Rm { force, nodes } => {
            for n in &nodes {
                client.call(
                    "POST",
                    &format!("/v1/nodes/{n}/remove"),
                    Some(&serde_json::json!({ "force": force })),
                )?;
                writeln!(out(), "{n}")?;
            }
        }
    }
    Ok(())
}

fn role_change(client: &Client, nodes: &[String], role: &str) -> anyhow::Result<()> {
    for n in nodes {
        client.call("POST", &format!("/v1/nodes/{n}/update"), Some(&serde_json::json!({ "role": role })))?;
        writeln!(out(), "Node {n} is now a {role} in the swarm.")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn durations_parse_like_docker_flags() {
        use super::parse_duration;
        assert_eq!(parse_duration("5s"), Ok(5));
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("2160h"), Ok(2160 * 3600));
        assert_eq!(parse_duration("7"), Ok(7));
        assert!(parse_duration("5x").unwrap_err().contains("invalid duration"));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn tables_pad_like_docker() {
        let rows = vec![vec!["ID".into(), "HOSTNAME".into()], vec!["abc *".into(), "node1".into()]];
        assert_eq!(table(&rows), "ID      HOSTNAME\nabc *   node1\n");
    }
}
