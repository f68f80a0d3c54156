//! `shoal lab up|ls|exec|down` as a user runs them.

#![forbid(unsafe_code)]

use std::process::Command;

use netns_tests::{require_root, shoal_bin};
use shoal_runtime::NetNs;

fn shoal(args: &[&str]) -> std::process::Output {
    Command::new(shoal_bin()).args(args).output().expect("run shoal")
}

/// Takes the lab down even if the test fails half-way.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = shoal(&["lab", "down", &self.0]);
    }
}

#[test]
fn a_lab_comes_up_as_a_swarm_and_down_leaves_nothing() {
    require_root();
    let name = format!("t{}", std::process::id());
    let _down = Down(name.clone());
    let up = shoal(&["lab", "up", "--nodes", "3", "--clients", "1", "--name", &name]);
    assert!(up.status.success(), "lab up: {}", String::from_utf8_lossy(&up.stderr));
    let said = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(said.contains("node1 is the manager"), "{said}");
    // The client is a host of its own on the underlay, with no daemon.
    let client_addr = said
        .split("client1 is a host outside the swarm at ")
        .nth(1)
        .and_then(|rest| rest.split(".\n").next())
        .unwrap_or_else(|| panic!("no client in {said}"))
        .to_owned();
    let addrs = shoal(&["lab", "exec", "--name", &name, "client1", "--", "ip", "-o", "-4", "addr"]);
    assert!(String::from_utf8_lossy(&addrs.stdout).contains(&format!("{client_addr}/")));
    let env =
        shoal(&["lab", "exec", "--name", &name, "client1", "--", "sh", "-c", "echo ${SHOAL_HOST:-none}"]);
    assert_eq!(String::from_utf8_lossy(&env.stdout).trim(), "none");

    let ls = String::from_utf8_lossy(&shoal(&["lab", "ls"]).stdout).into_owned();
    assert!(
        ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == [name.as_str(), "3", "3"]),
        "{ls}"
    );

    let bin = shoal_bin();
    let bin = bin.to_str().unwrap();
    let nodes = shoal(&["lab", "exec", "--name", &name, "node1", "--", bin, "node", "ls"]);
    let table = String::from_utf8_lossy(&nodes.stdout);
    assert!(nodes.status.success(), "{}", String::from_utf8_lossy(&nodes.stderr));
    assert_eq!(table.lines().filter(|l| l.contains("Ready") && l.contains("Active")).count(), 3, "{table}");
    let worker = shoal(&["lab", "exec", "--name", &name, "node2", "--", bin, "node", "ls"]);
    assert!(!worker.status.success(), "a worker refuses node ls, and lab exec passes its exit code on");
    let missing = shoal(&["lab", "exec", "--name", &name, "node9", "--", "true"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("has no node node9"));

    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("/run/shoal/labs/{name}/lab.json")).unwrap()).unwrap();
    let pids: Vec<u64> =
        record["nodes"].as_array().unwrap().iter().map(|n| n["pid"].as_u64().unwrap()).collect();
    assert_eq!(pids.len(), 3);

    let down = shoal(&["lab", "down", &name]);
    assert!(down.status.success(), "lab down: {}", String::from_utf8_lossy(&down.stderr));
    let prefix = format!("shoal-lab-{name}-");
    assert!(NetNs::list().iter().all(|n| !n.starts_with(&prefix)), "namespaces left behind");
    for pid in pids {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("daemon"), "daemon {pid} still runs");
    }
    assert!(!std::path::Path::new(&format!("/run/shoal/labs/{name}")).exists());
    let again = shoal(&["lab", "down", &name]);
    assert!(String::from_utf8_lossy(&again.stderr).contains(&format!("no lab named {name}")));
}

#[test]
fn bad_lab_requests_say_what_is_wrong() {
    require_root();
    let bad = shoal(&["lab", "up", "--name", "Bad Name"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid lab name"));
    let many = shoal(&["lab", "up", "--nodes", "0", "--name", "zero"]);
    assert!(String::from_utf8_lossy(&many.stderr).contains("1 to 50 nodes"));
}
