//! The control plane between real daemons: `swarm init` and `join` over QUIC
//! with mutual TLS, `node` verbs, bad tokens, durable state, node liveness.

#![forbid(unsafe_code)]
#![allow(clippy::print_stdout)] // the figures, for `--nocapture`

use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;

/// A swarm of node1 (manager) and node2, node3 (workers); node4 stays out.
fn swarm() -> (Cluster, String) {
    let c = Cluster::start_bare(4);
    let init = c.cli(0, &["swarm", "init", "--dispatcher-heartbeat", "1s"]);
    assert!(init.contains("Swarm initialized: current node ("), "{init}");
    assert!(init.contains("shoal swarm join --token SWMTKN-1-"), "{init}");
    let token = c.cli(0, &["swarm", "join-token", "-q", "worker"]).trim().to_owned();
    assert!(init.contains(&token), "init prints the worker token");
    let manager = format!("{}:2377", c.lab.host(0).underlay);
    for i in [1, 2] {
        let out = c.cli(i, &["swarm", "join", "--token", &token, &manager]);
        assert!(out.contains("joined a swarm as a worker"), "{out}");
    }
    (c, token)
}

/// `node ls --format json`: docker's rows (`Hostname`, `Status`...).
fn ls(c: &Cluster) -> Vec<serde_json::Value> {
    c.cli(0, &["node", "ls", "--format", "json"]).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn state_of(c: &Cluster, hostname: &str) -> String {
    ls(c)
        .iter()
        .find(|n| n["Hostname"] == hostname)
        .map(|n| n["Status"].as_str().unwrap_or("").to_lowercase())
        .unwrap_or_default()
}

#[test]
fn node_ls_shows_three_ready_nodes_and_labels_show_in_inspect() {
    let (c, _) = swarm();
    let table = c.cli(0, &["node", "ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("ID")
            && lines[0].contains("MANAGER STATUS")
            && lines[0].contains("ENGINE VERSION")
    );
    assert_eq!(lines.iter().filter(|l| l.contains("Ready") && l.contains("Active")).count(), 3, "{table}");
    assert_eq!(lines.iter().filter(|l| l.contains("Leader")).count(), 1, "{table}");
    assert!(
        lines.iter().any(|l| l.contains(" * ") && l.contains("node1")),
        "the local node is starred:\n{table}"
    );

    let out = c.cli(0, &["node", "update", "--label-add", "zone=east", "--label-add", "ssd", "node2"]);
    assert_eq!(out.trim(), "node2");
    let inspect: serde_json::Value = serde_json::from_str(&c.cli(0, &["node", "inspect", "node2"])).unwrap();
    assert_eq!(inspect[0]["Spec"]["Labels"]["zone"], "east");
    assert_eq!(inspect[0]["Spec"]["Labels"]["ssd"], "");
    assert_eq!(inspect[0]["Spec"]["Role"], "worker");
    let pretty = c.cli(0, &["node", "inspect", "--pretty", "node2"]);
    assert!(pretty.contains("zone=east") && pretty.contains("Hostname:\t\tnode2"), "{pretty}");
    c.cli(0, &["node", "update", "--label-rm", "ssd", "--availability", "drain", "node2"]);
    let inspect: serde_json::Value = serde_json::from_str(&c.cli(0, &["node", "inspect", "node2"])).unwrap();
    assert!(inspect[0]["Spec"]["Labels"].get("ssd").is_none());
    assert_eq!(inspect[0]["Spec"]["Availability"], "drain");

    // Bad input says what is wrong and changes nothing.
    assert!(
        c.cli_err(0, &["node", "update", "--availability", "sleepy", "node2"])
            .contains("[possible values: active, pause, drain]")
    );
    assert!(c.cli_err(0, &["node", "update", "--label-rm", "nope", "node2"]).contains("doesn't exist"));
    assert!(c.cli_err(0, &["node", "inspect", "node9"]).contains("node node9 not found"));
    assert!(c.cli_err(0, &["node", "promote", "node2"]).contains("replicated manager state"));
    assert!(c.cli_err(1, &["node", "ls"]).contains("not a swarm manager"), "workers refuse cluster verbs");
    assert!(c.cli_err(0, &["node", "rm", "node3"]).contains("is not down"));
    assert!(c.cli_err(0, &["swarm", "leave"]).contains("--force"));
}

#[test]
fn bad_tokens_fail_clearly_and_leave_no_trace() {
    let (c, token) = swarm();
    let manager = format!("{}:2377", c.lab.host(0).underlay);
    // Right CA, wrong secret.
    let (digest_part, _) = token.rsplit_once('-').unwrap();
    let wrong_secret = format!("{digest_part}-{}", "1".repeat(25));
    assert!(
        c.cli_err(3, &["swarm", "join", "--token", &wrong_secret, &manager]).contains("invalid join token")
    );
    // Another cluster's token: its CA digest does not match this manager.
    let foreign = format!("SWMTKN-1-{}-{}", "2".repeat(50), "3".repeat(25));
    assert!(
        c.cli_err(3, &["swarm", "join", "--token", &foreign, &manager])
            .contains("does not match the join token")
    );
    // Not a token at all.
    assert!(c.cli_err(3, &["swarm", "join", "--token", "hello", &manager]).contains("invalid join token"));
    // A rotated-out token.
    let rotated = c.cli(0, &["swarm", "join-token", "--rotate", "worker"]);
    assert!(rotated.contains("Successfully rotated worker join token."));
    assert!(c.cli_err(3, &["swarm", "join", "--token", &token, &manager]).contains("invalid join token"));
    assert_eq!(ls(&c).len(), 3, "failed joins leave no trace in node ls");
    // The new token works.
    let fresh = c.cli(0, &["swarm", "join-token", "-q", "worker"]).trim().to_owned();
    assert_ne!(fresh, token);
    c.cli(3, &["swarm", "join", "--token", &fresh, &manager]);
    assert_eq!(ls(&c).len(), 4);
}

#[test]
fn the_manager_keeps_its_state_across_restarts_and_worker_liveness_is_tracked() {
    let (mut c, _) = swarm();
    c.cli(0, &["node", "update", "--label-add", "rack=r1", "node3"]);
    let token = c.cli(0, &["swarm", "join-token", "-q", "worker"]);
    assert!(c.stop_daemon(0), "the manager stops cleanly");
    c.start_daemon(0);
    assert_eq!(c.cli(0, &["swarm", "join-token", "-q", "worker"]), token, "tokens survive a restart");
    let inspect: serde_json::Value = serde_json::from_str(&c.cli(0, &["node", "inspect", "node3"])).unwrap();
    assert_eq!(inspect[0]["Spec"]["Labels"]["rack"], "r1", "labels survive a restart");
    assert_eq!(ls(&c).len(), 3, "nodes survive a restart");
    assert!(wait_until(Duration::from_secs(15), || state_of(&c, "node2") == "ready"), "workers reconnect");

    // A killed worker goes Down within three heartbeats (1 s each here).
    c.kill_daemon(2);
    assert!(wait_until(Duration::from_secs(10), || state_of(&c, "node3") == "down"), "node3 not marked down");
    assert!(c.cli(0, &["node", "ls"]).lines().any(|l| l.contains("node3") && l.contains("Down")));
    c.start_daemon(2);
    assert!(
        wait_until(Duration::from_secs(15), || state_of(&c, "node3") == "ready"),
        "node3 not ready again"
    );

    // Gossip came with the swarm: the nodes see each other.
    assert!(wait_until(Duration::from_secs(15), || {
        c.members(0).iter().filter(|m| m.2 == "alive").count() == 3
    }));

    // A down node can be removed; a worker can leave.
    c.kill_daemon(1);
    assert!(wait_until(Duration::from_secs(10), || state_of(&c, "node2") == "down"));
    c.cli(0, &["node", "rm", "node2"]);
    assert_eq!(ls(&c).len(), 2);
    assert!(c.cli(2, &["swarm", "leave"]).contains("left the swarm"));
    // Leaving frees everything: the same daemon can join again.
    let token = c.cli(0, &["swarm", "join-token", "-q", "worker"]).trim().to_owned();
    c.cli(2, &["swarm", "join", "--token", &token, &format!("{}:2377", c.lab.host(0).underlay)]);
    assert!(
        wait_until(Duration::from_secs(10), || ls(&c).iter().filter(|n| n["Status"] == "Ready").count() == 2)
    );
}

#[test]
fn workers_renew_their_certificates_and_strangers_get_no_session() {
    let c = Cluster::start_bare(3);
    c.cli(0, &["swarm", "init", "--dispatcher-heartbeat", "1s", "--cert-expiry", "20s"]);
    let token = c.cli(0, &["swarm", "join-token", "-q", "worker"]).trim().to_owned();
    let manager = format!("{}:2377", c.lab.host(0).underlay);
    c.cli(1, &["swarm", "join", "--token", &token, &manager]);
    for i in [0, 1] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(c.data_dir(i).join("swarm")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the swarm directory (keys, CA) is root's alone, not {mode:o}");
    }
    let cert_path = c.data_dir(1).join("swarm/node.crt");
    let first = std::fs::read_to_string(&cert_path).unwrap();
    let manager_cert = c.data_dir(0).join("swarm/node.crt");
    let manager_first = std::fs::read_to_string(&manager_cert).unwrap();
    assert!(
        wait_until(Duration::from_secs(25), || std::fs::read_to_string(&cert_path).unwrap_or_default()
            != first),
        "the worker did not renew its 20 s certificate"
    );
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(&manager_cert).unwrap_or_default()
            != manager_first),
        "the manager did not renew its own certificate"
    );
    // A session that broke with the renewed certificates shows as node2 going
    // down once three heartbeats (1 s each here) are missed: watch a little
    // longer than that.
    assert!(
        !wait_until(Duration::from_secs(5), || state_of(&c, "node2") != "ready"),
        "the session does not go on with the renewed certificates: node2 is {}",
        state_of(&c, "node2")
    );

    // A client with no certificate may ask to join, nothing else; a client
    // whose certificate comes from another CA gets no connection at all.
    let ca_pem = std::fs::read_to_string(c.data_dir(0).join("swarm/ca.crt")).unwrap();
    let ca_der = shoal_control::ca::pem_to_der(&ca_pem).unwrap();
    let digest = shoal_control::ca::digest(&ca_der);
    let host = c.lab.host(2).clone();
    let addr: std::net::SocketAddr = manager.parse().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let netns = shoal_runtime::NetNs::open(&host.netns).unwrap();
    let (anonymous, foreign) = netns
        .run(|| {
            runtime.block_on(async {
                let anonymous = async {
                    let conn =
                        client(shoal_control::transport::join_client_config(digest).unwrap(), addr).await?;
                    let answer: serde_json::Value =
                        shoal_control::transport::call(&conn, &serde_json::json!("Heartbeat"))
                            .await
                            .map_err(|e| e.to_string())?;
                    Ok::<_, String>(answer)
                }
                .await;
                let other = shoal_control::ClusterCa::create("elsewhere").unwrap();
                let (csr, key) = shoal_control::ca::new_csr().unwrap();
                let subject = shoal_control::Subject {
                    node_id: "intruder",
                    role: shoal_control::Role::Manager,
                    cluster_id: "elsewhere",
                    validity: Duration::from_secs(3600),
                };
                let cert = other.sign_csr(&csr, subject).unwrap();
                let config = shoal_control::transport::client_config(&ca_der, &cert, &key).unwrap();
                let foreign = match client(config, addr).await {
                    Err(e) => Err(e),
                    Ok(conn) => shoal_control::transport::call::<_, serde_json::Value>(
                        &conn,
                        &serde_json::json!("Heartbeat"),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                };
                (anonymous, foreign)
            })
        })
        .unwrap();
    let anonymous = anonymous.expect("an anonymous client can connect");
    assert!(
        anonymous["Error"]["message"].as_str().unwrap_or("").contains("need the node's certificate"),
        "{anonymous}"
    );
    assert!(foreign.is_err(), "a certificate from another CA opened a session: {foreign:?}");
}

async fn client(
    config: quinn::ClientConfig,
    addr: std::net::SocketAddr,
) -> Result<quinn::Connection, String> {
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(config);
    let connecting =
        endpoint.connect(addr, shoal_control::transport::SERVER_NAME).map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

#[test]
fn overlay_networks_get_subnets_and_vnis_and_survive_a_manager_restart() {
    let (mut c, _) = swarm();
    let id = c.cli(0, &["network", "create", "-d", "overlay", "backend"]);
    assert_eq!(id.trim().len(), 25, "prints the new network's id: {id}");
    c.cli(0, &["network", "create", "--subnet", "10.20.0.0/16", "--attachable", "frontend"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&c.cli(0, &["network", "inspect", "backend"])).unwrap();
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Gateway"], "10.0.0.1");
    assert_eq!(inspect[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"], "4096");
    let table = c.cli(0, &["network", "ls"]);
    assert!(table.starts_with("NETWORK ID"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("frontend") && l.contains("overlay") && l.contains("swarm")),
        "{table}"
    );

    assert!(c.cli_err(0, &["network", "create", "backend"]).contains("already exists"));
    assert!(
        c.cli_err(0, &["network", "create", "--subnet", "10.20.5.0/24", "x"])
            .contains("overlaps network frontend")
    );
    assert!(c.cli_err(0, &["network", "create", "-d", "bridge", "y"]).contains("overlay driver"));
    assert!(c.cli_err(0, &["network", "create", "--subnet", "10.0.9.1/24", "z"]).contains("invalid subnet"));
    assert!(c.cli_err(1, &["network", "ls"]).contains("not a swarm manager"));

    // The routing mesh's network comes with the swarm, like docker's.
    let ingress: serde_json::Value =
        serde_json::from_str(&c.cli(0, &["network", "inspect", "ingress"])).unwrap();
    assert_eq!(ingress[0]["Ingress"], true, "{ingress}");
    assert_eq!(ingress[0]["IPAM"]["Config"][0]["Subnet"], "10.255.0.0/16");
    assert!(
        c.cli_err(0, &["network", "rm", "ingress"]).contains("routing mesh's network and cannot be removed")
    );

    assert!(c.stop_daemon(0));
    c.start_daemon(0);
    assert_eq!(
        c.cli(0, &["network", "ls", "--format", "json"]).lines().count(),
        3,
        "networks survive a restart (ingress, backend, frontend)"
    );
    assert_eq!(c.cli(0, &["network", "rm", "backend"]).trim(), "backend");
    assert!(c.cli_err(0, &["network", "inspect", "backend"]).contains("network backend not found"));
    // The freed subnet and VNI go to the next network.
    c.cli(0, &["network", "create", "again"]);
    let inspect: serde_json::Value =
        serde_json::from_str(&c.cli(0, &["network", "inspect", "again"])).unwrap();
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Subnet"], "10.0.0.0/24");
}

#[test]
fn the_gossip_key_rotates_without_a_gap() {
    let (mut c, _) = swarm();
    // A service whose rows every node holds, written with the first key.
    c.cli(0, &["network", "create", "-d", "overlay", "front"]);
    c.cli(
        0,
        &["service", "create", "--name", "web", "--replicas", "3", "--network", "front", "sleep", "600"],
    );
    let live = |c: &Cluster, i: usize| c.metric(i, "shoal_table_rows{kind=\"live\"}");
    let settled = |c: &Cluster| (0..3).map(|i| live(c, i)).collect::<Vec<_>>();
    assert!(wait_until(Duration::from_secs(20), || settled(&c)
        .iter()
        .all(|n| *n == settled(&c)[0] && *n > 0.0)));
    let rows = settled(&c)[0];
    let keys = |c: &Cluster, i: usize| -> Vec<String> {
        let text =
            std::fs::read_to_string(c.data_dir(i).join("swarm").join("swarm.json")).expect("swarm.json");
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        config["gossip_keys"]
            .as_str()
            .unwrap()
            .lines()
            .map(|l| l.split(':').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(keys(&c, 1), ["1"]);
    let downs = |c: &Cluster| (0..3).map(|i| c.metric(i, "shoal_gossip_member_downs_total")).sum::<f64>();
    let refused = |c: &Cluster| {
        (0..3)
            .map(|i| {
                c.metric(i, "shoal_gossip_dropped_total{reason=\"unknown_key\"}")
                    + c.metric(i, "shoal_gossip_dropped_total{reason=\"unauthenticated\"}")
            })
            .sum::<f64>()
    };
    let (downs_before, refused_before) = (downs(&c), refused(&c));

    let started = std::time::Instant::now();
    assert_eq!(c.cli(0, &["swarm", "update", "--rotate-gossip-key"]).trim(), "Swarm updated.");
    println!(
        "gossip key rotation: {:.1} s (three steps, heartbeats every second)",
        started.elapsed().as_secs_f64()
    );
    for i in 0..3 {
        assert_eq!(keys(&c, i), ["2"], "node{} holds the new key alone", i + 1);
    }
    // No frame was refused and no member taken for dead on the way.
    assert_eq!(refused(&c), refused_before, "frames refused during the rotation");
    assert_eq!(downs(&c), downs_before, "a member was declared down during the rotation");
    // Gossip works with the new key alone: a new service's rows reach every node.
    c.cli(0, &["service", "scale", "web=6"]);
    assert!(
        wait_until(Duration::from_secs(20), || settled(&c).iter().all(|n| *n > rows)),
        "rows written after the rotation replicate: {:?}",
        settled(&c)
    );
    // A restarted worker gossips with the key it recorded.
    c.kill_daemon(2);
    c.start_daemon(2);
    assert!(
        wait_until(Duration::from_secs(20), || c.state_of(0, 2).as_deref() == Some("alive")),
        "the restarted worker rejoins gossip"
    );
    assert!(
        c.cli_err(0, &["swarm", "update"]).contains("--rotate-gossip-key"),
        "nothing to update says what to give"
    );
}
