//! Stacks on a swarm of real daemons: the seed tutorial's Flask + Redis hit
//! counter deployed from `examples/stackdemo` (Debian's python3 with Flask,
//! Debian's redis-server), reached with curl from a lab host outside the
//! swarm; and compose files' variables, merging, pruning and errors.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use netns_tests::cluster::Cluster;
use netns_tests::wait_until;
use serde_json::Value;
use shoal_lab::Lab;

/// The example stack, as `make demo` deploys it.
fn example(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/stackdemo").join(file).display().to_string()
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `curl -s` from lab host `client` to `url`: the body, or None.
fn curl(c: &Cluster, client: usize, url: &str) -> Option<String> {
    let out =
        Lab::run_in(&c.lab.host(client).netns, "curl", &["-s", "--max-time", "5", url]).expect("run curl");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The count in the Flask app's answer ("... I have been seen N times.").
fn hits(answer: &str) -> u64 {
    answer
        .split("seen ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not the hit counter's answer: {answer:?}"))
}

/// The rows of a `--format json` listing.
fn rows(out: &str) -> Vec<Value> {
    out.lines().map(|l| serde_json::from_str(l).expect("a JSON row")).collect()
}

/// The tasks of `service` as the API gives them.
fn tasks(c: &Cluster, service: &str) -> Vec<Value> {
    let inspect = c.json(0, &["service", "inspect", service]);
    let id = inspect[0]["ID"].as_str().expect("service id").to_owned();
    let ps = c.cli(0, &["service", "ps", "--no-trunc", "--format", "json", &id]);
    rows(&ps)
}

/// Ids of `service`'s running tasks.
fn running_ids(c: &Cluster, service: &str) -> Vec<String> {
    let mut ids: Vec<String> = tasks(c, service)
        .iter()
        .filter(|t| {
            t["DesiredState"] == "Running" && t["CurrentState"].as_str().unwrap_or("").starts_with("Running")
        })
        .map(|t| t["ID"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    ids
}

/// Processes of the lab whose mount namespace holds a mount of `path`.
fn mounts_of(path: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let info = entry.path().join("mountinfo");
        if let Ok(text) = std::fs::read_to_string(&info)
            && text.contains(path)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

#[test]
fn the_seed_stack_counts_hits_through_every_node() {
    let c = Cluster::start_swarm_with_clients(3, 1, &[]);
    let client = 3;
    // Task sandboxes on the nodes (not the routing mesh's own).
    let sandboxes = |c: &Cluster| -> usize { (0..3).map(|i| c.task_sandboxes(i).len()).sum() };

    // The seed's file as written: `build` ignored, images that are not
    // programs named with their node.
    let seed = c.try_cli(0, &["stack", "deploy", "-c", &example("seed/docker-compose.yml"), "seed"]);
    let (stdout, stderr) = text(&seed);
    assert!(!seed.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("Ignoring unsupported options: build"), "{stderr}");
    assert!(stdout.contains("Creating network seed_default\n"), "{stdout}");
    assert!(
        stdout.contains("Creating service seed_web\n") && stdout.contains("Creating service seed_redis\n")
    );
    assert!(
        stderr
            .contains("service seed_web: image \"shuhaojie/stackdemo:latest\" is not a program on node node"),
        "{stderr}"
    );
    assert!(stderr.contains("set the service's image: to a program installed on every node"), "{stderr}");
    let removed = c.cli(0, &["stack", "rm", "seed"]);
    assert!(removed.contains("Removing network seed_default"), "{removed}");

    // The seed's stack for Shoal: redis first (web depends on it, healthy).
    let out = c.cli(0, &["stack", "deploy", "-c", &example("docker-compose.yml"), "demo"]);
    let creating: Vec<&str> = out.lines().filter(|l| l.starts_with("Creating")).collect();
    assert_eq!(
        creating,
        ["Creating network demo_default", "Creating service demo_redis", "Creating service demo_web"],
        "{out}"
    );
    let ls = c.cli(0, &["stack", "ls"]);
    assert!(ls.starts_with("NAME") && ls.lines().any(|l| l.split_whitespace().eq(["demo", "2"])), "{ls}");
    let services = rows(&c.cli(0, &["stack", "services", "--format", "json", "demo"]));
    let summary: Vec<(String, String)> = services
        .iter()
        .map(|s| (s["Name"].as_str().unwrap().to_owned(), s["Replicas"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(summary, [("demo_redis".into(), "1/1".into()), ("demo_web".into(), "2/2".into())]);
    assert_eq!(services[1]["Ports"], "*:8000->8000/tcp");
    let ps = c.cli(0, &["stack", "ps", "demo"]);
    for name in ["demo_redis.1", "demo_web.1", "demo_web.2"] {
        assert!(ps.contains(name), "{ps}");
    }
    let labelled = c.cli(0, &["service", "ls", "-q", "--filter", "label=com.docker.stack.namespace=demo"]);
    assert_eq!(labelled.lines().count(), 2, "{labelled}");

    let inspect = c.json(0, &["service", "inspect", "demo_web"]);
    assert_eq!(inspect[0]["Spec"]["DependsOn"], serde_json::json!(["demo_redis"]));

    // The counter counts up through two different nodes' :8000.
    // The mesh listens once each node's directory has the service, and
    // Flask a moment after its task starts.
    let first = format!("http://{}:8000/", c.lab.host(0).underlay);
    let mut answer = None;
    assert!(
        wait_until(Duration::from_secs(30), || {
            answer = curl(&c, client, &first).filter(|a| a.starts_with("Hello"));
            answer.is_some()
        }),
        "no answer from {first}: {}",
        c.cli(0, &["service", "logs", "demo_web"])
    );
    let mut last = hits(answer.as_deref().unwrap());
    assert_eq!(last, 1);
    for node in [1, 2, 1] {
        let url = format!("http://{}:8000/", c.lab.host(node).underlay);
        let answer = curl(&c, client, &url).unwrap_or_else(|| panic!("no answer from {url}"));
        assert!(answer.starts_with("Hello World! I have been seen "), "{answer}");
        let n = hits(&answer);
        assert_eq!(n, last + 1, "{answer}");
        last = n;
    }

    // redis's data is in a named volume on its node; it survives the task.
    let redis_node: usize = {
        let t = &tasks(&c, "demo_redis")[0];
        let node = t["Node"].as_str().unwrap().to_owned();
        (0..3).find(|&i| format!("node{}", i + 1) == node).expect("a lab node")
    };
    let volumes = c.cli(redis_node, &["volume", "ls", "-q"]);
    assert!(volumes.lines().any(|v| v == "demo_redis-data"), "{volumes}");
    let refused = c.try_cli(redis_node, &["volume", "rm", "demo_redis-data"]);
    assert!(!refused.status.success());
    assert!(text(&refused).1.contains("volume is in use"), "{:?}", text(&refused));
    let before = running_ids(&c, "demo_redis");
    c.cli(0, &["service", "update", "--force", "--detach", "demo_redis"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = running_ids(&c, "demo_redis");
            !now.is_empty() && now != before
        }),
        "redis was not restarted: {:?}",
        tasks(&c, "demo_redis")
    );
    let url = format!("http://{}:8000/", c.lab.host(2).underlay);
    let mut answer = None;
    assert!(wait_until(Duration::from_secs(30), || {
        answer = curl(&c, client, &url).filter(|a| a.starts_with("Hello"));
        answer.is_some()
    }));
    assert_eq!(hits(answer.as_deref().unwrap()), last + 1, "the count went on from the volume's data");

    // Update in place: a second file changes web only; redis keeps its task.
    let redis_before = running_ids(&c, "demo_redis");
    let web_before = running_ids(&c, "demo_web");
    let dir = std::env::temp_dir().join(format!("{}-stack", c.lab.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let over = dir.join("override.yml");
    std::fs::write(&over, "services:\n  web:\n    environment:\n      GREETING: merged\n").unwrap();
    let out = c.cli(
        0,
        &["stack", "deploy", "-c", &example("docker-compose.yml"), "-c", over.to_str().unwrap(), "demo"],
    );
    assert!(
        out.contains("Updating service demo_web (id: ") && out.contains("Updating service demo_redis"),
        "{out}"
    );
    let env =
        c.json(0, &["service", "inspect", "demo_web"])[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Env"]
            .clone();
    assert_eq!(env, serde_json::json!(["GREETING=merged"]), "the second file's environment merged in");
    let web_after = running_ids(&c, "demo_web");
    assert!(web_after.iter().all(|t| !web_before.contains(t)), "web rolled: {web_before:?} -> {web_after:?}");
    assert_eq!(running_ids(&c, "demo_redis"), redis_before, "redis, unchanged, kept its task");

    // stack rm: services, then the network; no sandbox or volume mount
    // stays behind; the volume itself is kept, as docker keeps it.
    let volume_dir = c.data_dir(redis_node).join("volumes/demo_redis-data").display().to_string();
    assert!(!mounts_of(&volume_dir).is_empty(), "redis's task mounts its volume");
    assert_eq!(sandboxes(&c), 3, "one sandbox per task");
    let out = c.cli(0, &["stack", "rm", "demo"]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["Removing service demo_redis", "Removing service demo_web", "Removing network demo_default"]
    );
    assert!(
        wait_until(Duration::from_secs(30), || mounts_of(&volume_dir).is_empty() && sandboxes(&c) == 0),
        "left behind: mounts in {:?}, {} task sandboxes",
        mounts_of(&volume_dir),
        sandboxes(&c)
    );
    assert!(c.cli(0, &["service", "ls", "-q"]).trim().is_empty());
    assert!(!c.cli(0, &["network", "ls"]).contains("demo_default"));
    assert!(c.cli(redis_node, &["volume", "ls", "-q"]).lines().any(|v| v == "demo_redis-data"));
    let gone = c.try_cli(0, &["stack", "ps", "demo"]);
    assert!(text(&gone).1.contains("Nothing found in stack: demo"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A directory of compose files for one test, removed at the end.
struct Files(PathBuf);

impl Files {
    fn new(c: &Cluster) -> Files {
        let dir = PathBuf::from("/var/tmp").join(format!("{}-compose", c.lab.name()));
        std::fs::create_dir_all(&dir).unwrap();
        Files(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn compose_files_interpolate_prune_and_refuse_errors_with_line_and_column() {
    let c = Cluster::start_swarm_with_clients(1, 1, &[]);
    let files = Files::new(&c);
    files.write(".env", "PORT=9100\nGREETING=from-dotenv\n");
    // `second` depends on `first`, healthy only once it made a file 2 s
    // after starting; `second` notes whether the file was there when it
    // started.
    let dir = files.0.display().to_string();
    let app = r#"
services:
  first:
    image: sh
    command: ["-c", "sleep 2; touch DIR/ready; exec sleep 1000"]
    healthcheck:
      test: test -e DIR/ready
      interval: 500ms
      retries: 20
  second:
    image: sh
    command: ["-c", "if test -e DIR/ready; then echo after; else echo before; fi > DIR/order; exec sleep 1000"]
    depends_on:
      first: {condition: service_healthy}
  http:
    image: python3
    command: -m http.server ${PORT}
    environment:
      GREETING: ${GREETING}
      UNSET: ${NOT_SET_ANYWHERE:-fallback}
    ports: ["${PUBLISHED:-9101}:${PORT}"]
  extra:
    image: sleep
    command: ["1000"]
"#;
    let app = app.replace("DIR", &dir);
    let file = files.write("app.yml", &app);
    let out = c.cli(0, &["stack", "deploy", "-c", &file, "vars"]);
    assert!(
        out.contains("Creating service vars_http") && out.contains("Creating service vars_extra"),
        "{out}"
    );
    let env =
        c.json(0, &["service", "inspect", "vars_http"])[0]["Spec"]["TaskTemplate"]["ContainerSpec"].clone();
    assert_eq!(env["Env"], serde_json::json!(["GREETING=from-dotenv", "UNSET=fallback"]));
    assert_eq!(env["Args"], serde_json::json!(["-m", "http.server", "9100"]));
    let url = format!("http://{}:9101/", c.lab.host(0).underlay);
    assert!(wait_until(Duration::from_secs(20), || curl(&c, 1, &url).is_some()), "published 9101 -> 9100");
    let order = std::fs::read_to_string(files.0.join("order")).expect("second ran");
    assert_eq!(order, "after\n", "second started only once first was healthy");

    // --prune removes what the file no longer names.
    let pruned = files.write("pruned.yml", &app[..app.find("  extra:").unwrap()]);
    let out = c.cli(0, &["stack", "deploy", "--prune", "-c", &pruned, "vars"]);
    assert!(out.contains("Removing service vars_extra"), "{out}");
    assert!(out.contains("Updating service vars_http"), "{out}");
    assert_eq!(c.cli(0, &["service", "ls", "-q"]).lines().count(), 3);

    // Errors say where, and change nothing.
    let cases = [
        ("services:\n  web:\n    image: x\n    colour: blue\n", "bad.yml:4:5: unknown field `colour`"),
        (
            "services:\n  web:\n    image: x\n    deploy:\n      replicas: [1]\n",
            "bad.yml:5:7: invalid type: sequence, expected a string, number or boolean",
        ),
        (
            "services:\n  web:\n    image: x\n    ports: [\"80:http\"]\n",
            "bad.yml:4:13: invalid port \"80:http\"",
        ),
        (
            "services:\n  web:\n    image: ${IMAGE:?set IMAGE to the program}\n",
            "bad.yml:3:12: required variable IMAGE is missing a value: set IMAGE to the program",
        ),
    ];
    let networks_before = c.cli(0, &["network", "ls", "-q"]);
    for (yaml, expected) in cases {
        let bad = files.write("bad.yml", yaml);
        let out = c.try_cli(0, &["stack", "deploy", "-c", &bad, "broken"]);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{yaml}");
        assert!(stderr.contains(expected), "{yaml}: {stderr}");
        assert!(stdout.is_empty(), "nothing done: {stdout}");
    }
    assert_eq!(c.cli(0, &["network", "ls", "-q"]), networks_before, "no network made");
    assert!(!c.cli(0, &["stack", "ls"]).contains("broken"));
    c.cli(0, &["stack", "rm", "vars"]);

    // `-c -` reads the file from standard input, as docker does.
    let mut deploy = std::process::Command::new(netns_tests::shoal_bin())
        .arg("-H")
        .arg(format!("unix://{}", c.socket(0).display()))
        .args(["stack", "deploy", "--detach", "-c", "-", "piped"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run shoal");
    use std::io::Write;
    let yaml = b"services:\n  idle:\n    image: sleep\n    command: [\"1000\"]\n";
    deploy.stdin.take().expect("stdin").write_all(yaml).expect("write the file");
    let out = deploy.wait_with_output().expect("stack deploy");
    assert!(out.status.success() && text(&out).0.contains("Creating service piped_idle"), "{:?}", text(&out));
    c.cli(0, &["stack", "rm", "piped"]);
}
