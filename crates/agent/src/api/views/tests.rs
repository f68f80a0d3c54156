use std::collections::BTreeMap;

use shoal_control::{Availability, NetworkRecord, NodeRecord, NodeState, Role};
use shoal_orch::{
    FailureAction, HealthCheck, Placement, PortConfig, Resources, RestartCondition, RestartPolicy,
    UpdateConfig as OrchUpdate, UpdateOrder,
};

use super::*;
use shoal_orch::TaskSpec;

fn full_spec() -> shoal_orch::ServiceSpec {
    shoal_orch::ServiceSpec {
        name: "web".into(),
        mode: shoal_orch::Mode::Replicated { replicas: 5 },
        labels: BTreeMap::from([("tier".into(), "front".into())]),
        task: TaskSpec {
            image: "python3".into(),
            args: vec!["-m".into(), "http.server".into()],
            env: vec!["A=1".into()],
            workdir: Some("/srv".into()),
            user: Some("nobody".into()),
            hostname: Some("h".into()),
            networks: vec!["front".into()],
            aliases: BTreeMap::from([("front".into(), vec!["www".into()])]),
            placement: Placement {
                constraints: vec!["node.role==worker".into()],
                spread: vec!["zone".into()],
                max_replicas: 2,
            },
            resources: Resources {
                limit_nano_cpus: 500_000_000,
                limit_memory: 64 << 20,
                limit_pids: 100,
                reserve_nano_cpus: 1,
                reserve_memory: 2,
            },
            restart: RestartPolicy {
                condition: RestartCondition::OnFailure,
                delay_ms: 1500,
                max_attempts: 3,
                window_ms: 60_000,
            },
            health: Some(HealthCheck {
                cmd: "curl -f localhost".into(),
                interval_ms: 1000,
                timeout_ms: 500,
                retries: 2,
                start_period_ms: 250,
            }),
            stop_signal: "SIGQUIT".into(),
            stop_grace_ms: 2000,
            force_update: 4,
            mounts: vec![
                shoal_orch::Mount {
                    kind: shoal_orch::MountKind::Volume,
                    source: "data".into(),
                    target: "/var/lib/redis".into(),
                    readonly: false,
                },
                shoal_orch::Mount {
                    kind: shoal_orch::MountKind::Tmpfs,
                    source: String::new(),
                    target: "/scratch".into(),
                    readonly: true,
                },
            ],
        },
        update: OrchUpdate {
            parallelism: 2,
            delay_ms: 10,
            failure_action: FailureAction::Rollback,
            monitor_ms: 3000,
            max_failure_ratio: 0.25,
            order: UpdateOrder::StartFirst,
        },
        rollback: OrchUpdate::default(),
        ports: vec![PortConfig {
            name: Some("http".into()),
            published: 8080,
            target: 80,
            protocol: "tcp".into(),
            mode: "ingress".into(),
            proxy_protocol: true,
            local_only: true,
        }],
        endpoint: shoal_orch::EndpointConfig {
            mode: shoal_orch::EndpointMode::Dnsrr,
            dns_ttl_secs: 30,
            lb: shoal_orch::LbPolicy::Maglev,
            affinity_ms: Some(60_000),
        },
        depends_on: vec!["redis".into()],
    }
}

#[test]
fn a_spec_comes_back_as_it_went_out() {
    for spec in [full_spec(), shoal_orch::ServiceSpec { mode: shoal_orch::Mode::Global, ..full_spec() }] {
        let docker = ServiceSpec::from(&spec);
        let text = serde_json::to_string(&docker).unwrap();
        let back: ServiceSpec = serde_json::from_str(&text).unwrap();
        assert_eq!(shoal_orch::ServiceSpec::try_from(&back).unwrap(), spec, "{text}");
    }
}

#[test]
fn specs_have_docker_field_names() {
    let v = serde_json::to_value(ServiceSpec::from(&full_spec())).unwrap();
    assert_eq!(v["Mode"]["Replicated"]["Replicas"], 5);
    let c = &v["TaskTemplate"]["ContainerSpec"];
    assert_eq!(c["StopGracePeriod"], 2_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Test"], serde_json::json!(["CMD-SHELL", "curl -f localhost"]));
    assert_eq!(v["TaskTemplate"]["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(v["TaskTemplate"]["RestartPolicy"]["Condition"], "on-failure");
    assert_eq!(
        v["TaskTemplate"]["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
        "node.labels.zone"
    );
    assert_eq!(v["UpdateConfig"]["FailureAction"], "rollback");
    assert_eq!(v["UpdateConfig"]["Order"], "start-first");
    assert_eq!(v["EndpointSpec"]["Ports"][0]["PublishedPort"], 8080);
    let global =
        ServiceSpec::from(&shoal_orch::ServiceSpec { mode: shoal_orch::Mode::Global, ..full_spec() });
    assert_eq!(serde_json::to_value(global).unwrap()["Mode"], serde_json::json!({ "Global": {} }));
}

#[test]
fn specs_shoal_cannot_run_are_refused_with_the_reason() {
    let mut docker = ServiceSpec::from(&full_spec());
    docker.task_template.container_spec.healthcheck.as_mut().unwrap().test =
        vec!["CMD".into(), "true".into()];
    let err = shoal_orch::ServiceSpec::try_from(&docker).unwrap_err().to_string();
    assert!(err.contains("use [\"CMD-SHELL\", \"command\"]"), "{err}");
    let mut docker = ServiceSpec::from(&full_spec());
    docker.task_template.placement.preferences[0].spread.spread_descriptor = "node.role".into();
    assert!(shoal_orch::ServiceSpec::try_from(&docker).unwrap_err().to_string().contains("node.labels.KEY"));
    let mut docker = ServiceSpec::from(&full_spec());
    docker.task_template.container_spec.healthcheck.as_mut().unwrap().test = vec!["NONE".into()];
    assert_eq!(shoal_orch::ServiceSpec::try_from(&docker).unwrap().task.health, None);
}

#[test]
fn nodes_and_networks_have_docker_field_names() {
    let record = NodeRecord {
        id: "n1".into(),
        hostname: "node1".into(),
        role: Role::Manager,
        availability: Availability::Drain,
        labels: BTreeMap::new(),
        addr: "198.18.0.1".into(),
        state: NodeState::Down,
        os: "linux".into(),
        arch: "x86_64".into(),
        cpus: 2,
        memory_bytes: 1 << 30,
        engine_version: "0.1.0".into(),
        leader: true,
        created_at: 1_795_000_000,
        updated_at: 1_795_000_000,
    };
    let v = serde_json::to_value(Node::new(&record, "n1")).unwrap();
    assert_eq!(v["Self"], true);
    assert_eq!(v["Spec"]["Availability"], "drain");
    assert_eq!(v["Status"]["State"], "down");
    assert_eq!(v["Description"]["Resources"]["NanoCPUs"], 2_000_000_000u64);
    assert_eq!(v["ManagerStatus"]["Leader"], true);
    assert_eq!(v["CreatedAt"], "2026-11-18T11:06:40.000000000Z");
    let worker = NodeRecord { role: Role::Worker, ..record };
    assert!(serde_json::to_value(Node::new(&worker, "n1")).unwrap().get("ManagerStatus").is_none());
    let network = NetworkRecord {
        id: "x".into(),
        name: "front".into(),
        driver: "overlay".into(),
        attachable: false,
        subnet: "10.0.1.0/24".into(),
        gateway: "10.0.1.1".into(),
        vni: 4096,
        created_at: 0,
        ingress: true,
        labels: BTreeMap::from([("com.docker.stack.namespace".into(), "demo".into())]),
    };
    let v = serde_json::to_value(Network::from(&network)).unwrap();
    assert_eq!(v["IPAM"]["Config"][0]["Subnet"], "10.0.1.0/24");
    assert_eq!(v["Options"][VXLAN_ID_OPTION], "4096");
    assert_eq!(v["Ingress"], true);
    assert_eq!(v["Labels"]["com.docker.stack.namespace"], "demo");
}
