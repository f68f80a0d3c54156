//! Simulation: a world, nodes, and agents that do what they are told, in
//! virtual time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use shoal_sched::{Availability, Node};

use super::*;

#[derive(Default)]
struct Addresses {
    next: u32,
    live: BTreeSet<std::net::Ipv4Addr>,
    /// Whether the ingress network exists.
    ingress: bool,
}

impl Allocator for Addresses {
    fn allocate(&mut self, network: &str) -> Result<Attachment, String> {
        if network == INGRESS && !self.ingress {
            return Err(format!("network {network} not found"));
        }
        self.next += 1;
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + self.next);
        assert!(self.live.insert(ip), "address handed out twice");
        Ok(Attachment {
            network: network.into(),
            vni: 4096,
            subnet: "10.0.0.0/8".into(),
            ip,
            vip: None,
            local_vip: None,
        })
    }
    fn release(&mut self, a: &Attachment) {
        assert!(self.live.remove(&a.ip), "address {} released twice", a.ip);
    }
}

struct Sim {
    world: World,
    nodes: Vec<Node>,
    addrs: Addresses,
    now: u64,
    ids: u64,
    /// Tasks whose spec has this env entry fail right after starting.
    poison: Option<String>,
    /// Poisoned tasks fail before they run, not after.
    poison_early: bool,
}

fn node(i: usize) -> Node {
    Node {
        id: format!("n{i}"),
        hostname: format!("node{i}"),
        role: if i == 1 { "manager".into() } else { "worker".into() },
        os: "linux".into(),
        arch: "x86_64".into(),
        labels: BTreeMap::new(),
        ready: true,
        availability: Availability::Active,
        free_nano_cpus: 2_000_000_000,
        free_memory: 1 << 30,
        tasks: 0,
        tasks_by_service: HashMap::new(),
        host_ports: HashSet::new(),
    }
}

fn spec(name: &str, replicas: u64) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        mode: Mode::Replicated { replicas },
        labels: BTreeMap::new(),
        task: TaskSpec {
            image: "python3".into(),
            restart: RestartPolicy { delay_ms: 1_000, ..RestartPolicy::default() },
            ..TaskSpec::default()
        },
        update: UpdateConfig { monitor_ms: 2_000, ..UpdateConfig::default() },
        rollback: UpdateConfig { monitor_ms: 2_000, ..UpdateConfig::default() },
        ports: Vec::new(),
        endpoint: EndpointConfig::default(),
        depends_on: Vec::new(),
    }
}

impl Sim {
    fn new(n: usize) -> Sim {
        Sim {
            world: World::default(),
            nodes: (1..=n).map(node).collect(),
            addrs: Addresses::default(),
            now: 1_000_000,
            ids: 0,
            poison: None,
            poison_early: false,
        }
    }

    fn create(&mut self, spec: ServiceSpec) -> String {
        self.ids += 1;
        let id = format!("svc{}", self.ids);
        self.world.create_service(Service {
            id: id.clone(),
            version: 1,
            spec,
            previous: None,
            vips: Vec::new(),
            local_vip: None,
            update_status: None,
            created_ms: self.now,
            updated_ms: self.now,
        });
        id
    }

    fn reconcile(&mut self) {
        let ids = &mut self.ids;
        let mut new_id = || {
            *ids += 1;
            format!("t{:04}", *ids)
        };
        let mut env = Env { now: self.now, nodes: &self.nodes, alloc: &mut self.addrs, new_id: &mut new_id };
        self.world.reconcile(&mut env);
    }

    /// What the agents of ready nodes do with their assignments.
    fn agents(&mut self) {
        let mut reports = Vec::new();
        for t in self.world.tasks.values() {
            let Some(node) = t.node_id.as_deref() else { continue };
            if !self.nodes.iter().any(|n| n.id == node && n.ready) || t.status.state < TaskState::Assigned {
                continue;
            }
            let poisoned = self.poison.as_ref().is_some_and(|p| t.spec.env.contains(p));
            let next = if t.desired > TaskState::Running {
                (!t.status.state.is_terminal()).then_some(TaskState::Shutdown)
            } else if t.status.state < TaskState::Running && poisoned && self.poison_early {
                Some(TaskState::Rejected)
            } else if t.status.state < TaskState::Running {
                Some(TaskState::Running)
            } else if t.status.state == TaskState::Running && poisoned {
                Some(TaskState::Failed)
            } else {
                None
            };
            if let Some(state) = next {
                reports.push((t.id.clone(), node.to_owned(), TaskStatus::new(state, self.now, "agent")));
            }
        }
        for (id, node, status) in reports {
            self.world.report(&id, &node, status);
        }
    }

    /// Runs `secs` seconds of ticks of 250 ms.
    fn run(&mut self, secs: u64) {
        for _ in 0..secs * 4 {
            self.reconcile();
            self.agents();
            self.now += 250;
        }
        self.reconcile();
    }

    fn running(&self, service: &str) -> Vec<&Task> {
        self.world
            .tasks
            .values()
            .filter(|t| {
                t.service_id == service
                    && t.status.state == TaskState::Running
                    && t.desired == TaskState::Running
            })
            .collect()
    }

    fn per_node(&self, service: &str) -> Vec<usize> {
        let mut counts: Vec<usize> = self
            .nodes
            .iter()
            .map(|n| self.running(service).iter().filter(|t| t.node_id.as_deref() == Some(&n.id)).count())
            .collect();
        counts.sort();
        counts
    }

    fn fail(&mut self, task: &str, state: TaskState) {
        let node = self.world.tasks[task].node_id.clone().unwrap();
        assert!(self.world.report(task, &node, TaskStatus::new(state, self.now, "exited")));
    }

    fn update_env(&mut self, service: &str, env: &str) {
        let mut spec = self.world.services[service].spec.clone();
        spec.task.env.push(env.into());
        assert!(self.world.update_service(service, spec, self.now, false));
    }

    fn set_replicas(&mut self, service: &str, replicas: u64) {
        let mut spec = self.world.services[service].spec.clone();
        spec.mode = Mode::Replicated { replicas };
        self.world.update_service(service, spec, self.now, false);
    }

    fn update_state(&self, service: &str) -> UpdateState {
        self.world.services[service].update_status.as_ref().unwrap().state
    }
}

#[test]
fn five_replicas_spread_and_scale() {
    let mut sim = Sim::new(3);
    let web = sim.create(spec("web", 5));
    sim.run(2);
    assert_eq!(sim.per_node(&web), vec![1, 2, 2]);
    let slots: BTreeSet<u64> = sim.running(&web).iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=5).collect());
    assert_eq!(sim.addrs.live.len(), 0, "no networks, no addresses");

    sim.set_replicas(&web, 2);
    sim.run(2);
    assert_eq!(sim.running(&web).len(), 2);
    assert_eq!(
        sim.world.tasks.values().filter(|t| t.service_id == web).count(),
        2,
        "scaled-down tasks dropped"
    );
    sim.set_replicas(&web, 5);
    sim.run(2);
    assert_eq!(sim.per_node(&web), vec![1, 2, 2]);
    assert!(sim.world.services[&web].update_status.is_none(), "scaling does not roll tasks");
}

#[test]
fn addresses_follow_tasks() {
    let mut sim = Sim::new(3);
    let mut s = spec("web", 4);
    s.task.networks = vec!["front".into()];
    let web = sim.create(s);
    sim.run(2);
    assert_eq!(sim.addrs.live.len(), 4);
    let victim = sim.running(&web)[0].id.clone();
    sim.fail(&victim, TaskState::Failed);
    sim.run(3);
    assert_eq!(sim.addrs.live.len(), 4, "the failed task's address is freed, its replacement has one");
    assert!(sim.world.remove_service(&web).is_some());
    sim.run(2);
    assert!(sim.world.tasks.is_empty());
    assert!(sim.addrs.live.is_empty());
}

#[test]
fn restart_policy_any_with_delay() {
    let mut sim = Sim::new(2);
    let web = sim.create(spec("web", 2));
    sim.run(1);
    let victim = sim.running(&web)[0].clone();
    sim.fail(&victim.id, TaskState::Complete);
    sim.reconcile();
    let replacement = sim
        .world
        .tasks
        .values()
        .find(|t| t.slot == victim.slot && t.id != victim.id)
        .expect("replacement made at once")
        .clone();
    assert_eq!(replacement.start_at_ms, sim.now + 1_000);
    assert_eq!(replacement.status.state, TaskState::New, "not placed during the delay");
    sim.run(2);
    assert_eq!(sim.running(&web).len(), 2);
    assert_eq!(sim.world.tasks[&victim.id].desired, TaskState::Shutdown);
    assert_eq!(sim.world.tasks[&replacement.id].restarts, 1);
}

#[test]
fn restart_condition_none_and_on_failure() {
    let mut sim = Sim::new(2);
    let mut s = spec("once", 1);
    s.task.restart.condition = RestartCondition::None;
    let once = sim.create(s);
    let mut s = spec("flaky", 2);
    s.task.restart.condition = RestartCondition::OnFailure;
    let flaky = sim.create(s);
    sim.run(1);
    let t = sim.running(&once)[0].id.clone();
    sim.fail(&t, TaskState::Failed);
    let ok = sim.running(&flaky)[0].id.clone();
    sim.fail(&ok, TaskState::Complete);
    let bad = sim.running(&flaky)[0].id.clone();
    sim.fail(&bad, TaskState::Failed);
    sim.run(3);
    assert_eq!(sim.world.tasks.values().filter(|t| t.service_id == once).count(), 1, "none: never replaced");
    assert_eq!(sim.running(&flaky).len(), 1, "on-failure: only the failed task is replaced");
}

#[test]
fn restart_max_attempts_within_window() {
    let mut sim = Sim::new(1);
    let mut s = spec("crashy", 1);
    s.task.restart =
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 0, max_attempts: 2, window_ms: 60_000 };
    let crashy = sim.create(s);
    sim.run(1);
    for _ in 0..2 {
        let t = sim.running(&crashy)[0].id.clone();
        sim.fail(&t, TaskState::Failed);
        sim.run(1);
    }
    let t = sim.running(&crashy)[0].id.clone();
    sim.fail(&t, TaskState::Failed);
    sim.run(5);
    assert!(sim.running(&crashy).is_empty(), "third failure within the window: no more restarts");
    // After the window, a new failure restarts again.
    let mut s = spec("later", 1);
    s.task.restart =
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 0, max_attempts: 1, window_ms: 10_000 };
    let later = sim.create(s);
    sim.run(1);
    let t = sim.running(&later)[0].id.clone();
    sim.fail(&t, TaskState::Failed);
    sim.run(15);
    let t = sim.running(&later)[0].id.clone();
    sim.fail(&t, TaskState::Failed);
    sim.run(1);
    assert_eq!(sim.running(&later).len(), 1, "the window passed: the count starts again");
}

#[test]
fn down_node_tasks_are_rescheduled() {
    let mut sim = Sim::new(3);
    let web = sim.create(spec("web", 5));
    sim.run(1);
    let on_n3: Vec<String> = sim
        .running(&web)
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("n3"))
        .map(|t| t.id.clone())
        .collect();
    assert!(!on_n3.is_empty());
    sim.nodes[2].ready = false;
    sim.run(1);
    assert_eq!(sim.running(&web).len(), 5);
    assert!(sim.running(&web).iter().all(|t| t.node_id.as_deref() != Some("n3")));
    for id in &on_n3 {
        assert_eq!(sim.world.tasks[id].status.state, TaskState::Orphaned);
    }
    assert_eq!(sim.per_node(&web), vec![0, 2, 3]);
}

#[test]
fn drain_moves_tasks_and_pending_explains() {
    let mut sim = Sim::new(3);
    let web = sim.create(spec("web", 4));
    sim.run(1);
    sim.nodes[1].availability = Availability::Drain;
    sim.run(1);
    assert_eq!(sim.running(&web).len(), 4);
    assert!(sim.running(&web).iter().all(|t| t.node_id.as_deref() != Some("n2")));
    let mut s = spec("picky", 1);
    s.task.placement.constraints = vec!["node.labels.disk==ssd".into()];
    let picky = sim.create(s);
    sim.run(1);
    let t = sim.world.tasks.values().find(|t| t.service_id == picky).unwrap();
    assert_eq!(t.status.state, TaskState::Pending);
    assert_eq!(
        t.status.err.as_deref(),
        Some(
            "no suitable node (scheduling constraints not satisfied on 2 nodes; 1 node not available for new tasks)"
        )
    );
    sim.nodes[2].labels.insert("disk".into(), "ssd".into());
    sim.run(1);
    assert_eq!(sim.running(&picky)[0].node_id.as_deref(), Some("n3"));
}

#[test]
fn rolling_update_stop_first_one_at_a_time() {
    let mut sim = Sim::new(3);
    let web = sim.create(spec("web", 5));
    sim.run(1);
    sim.update_env(&web, "A=1");
    let mut max_new_in_transition = 0;
    for _ in 0..200 {
        sim.reconcile();
        // Stop-first, parallelism 1: never more than one slot without its
        // task running, and never two runnable tasks in one slot.
        let running = sim.running(&web).len();
        max_new_in_transition = max_new_in_transition.max(5 - running);
        let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
        for t in sim.world.tasks.values().filter(|t| t.service_id == web && t.is_runnable()) {
            *per_slot.entry(t.slot).or_default() += 1;
        }
        assert!(per_slot.values().all(|&n| n <= 2));
        sim.agents();
        sim.now += 250;
    }
    assert_eq!(max_new_in_transition, 1);
    assert_eq!(sim.update_state(&web), UpdateState::Completed);
    assert!(sim.running(&web).iter().all(|t| t.spec.env == vec!["A=1".to_owned()]));
    assert_eq!(sim.running(&web).len(), 5);
}

#[test]
fn rolling_update_start_first_overlaps() {
    let mut sim = Sim::new(2);
    let mut s = spec("web", 2);
    s.update.order = UpdateOrder::StartFirst;
    let web = sim.create(s);
    sim.run(1);
    sim.update_env(&web, "B=2");
    let mut saw_overlap = false;
    for _ in 0..100 {
        sim.reconcile();
        sim.agents();
        saw_overlap |= sim.running(&web).len() > 2;
        assert!(sim.running(&web).len() >= 2, "start-first never drops below the replica count");
        sim.now += 250;
    }
    assert!(saw_overlap);
    assert_eq!(sim.update_state(&web), UpdateState::Completed);
}

#[test]
fn update_failure_actions() {
    for (action, expected) in [
        (FailureAction::Pause, UpdateState::Paused),
        (FailureAction::Continue, UpdateState::Completed),
        (FailureAction::Rollback, UpdateState::RollbackCompleted),
    ] {
        let mut sim = Sim::new(3);
        let mut s = spec("web", 3);
        s.update.failure_action = action;
        s.task.restart.condition = RestartCondition::None;
        let web = sim.create(s);
        sim.run(1);
        sim.poison = Some("BROKEN=1".into());
        sim.update_env(&web, "BROKEN=1");
        sim.run(30);
        assert_eq!(sim.update_state(&web), expected, "{action:?}");
        let status = sim.world.services[&web].update_status.clone().unwrap();
        match action {
            FailureAction::Pause => {
                assert!(status.message.starts_with("update paused due to failure"), "{}", status.message);
                assert_eq!(status.updated, 1, "paused after the first batch");
            }
            FailureAction::Continue => assert_eq!(status.updated, 3),
            FailureAction::Rollback => {
                assert!(sim.world.services[&web].spec.task.env.is_empty());
                assert_eq!(sim.running(&web).len(), 3);
                assert!(sim.running(&web).iter().all(|t| t.spec.env.is_empty()));
            }
        }
    }
}

#[test]
fn manual_rollback() {
    let mut sim = Sim::new(2);
    let web = sim.create(spec("web", 2));
    sim.run(1);
    sim.update_env(&web, "V=2");
    sim.run(10);
    assert_eq!(sim.update_state(&web), UpdateState::Completed);
    let previous = sim.world.services[&web].previous.clone().unwrap();
    assert!(sim.world.update_service(&web, previous, sim.now, true));
    assert_eq!(sim.update_state(&web), UpdateState::RollbackStarted);
    sim.run(10);
    assert_eq!(sim.update_state(&web), UpdateState::RollbackCompleted);
    assert!(sim.running(&web).iter().all(|t| t.spec.env.is_empty()));
}

#[test]
fn global_follows_nodes() {
    let mut sim = Sim::new(3);
    let mut s = spec("agent", 0);
    s.mode = Mode::Global;
    let agent = sim.create(s);
    sim.run(1);
    assert_eq!(sim.per_node(&agent), vec![1, 1, 1]);
    sim.nodes.push(node(4));
    sim.run(1);
    assert_eq!(sim.per_node(&agent), vec![1, 1, 1, 1]);
    sim.nodes[0].availability = Availability::Drain;
    sim.run(1);
    assert_eq!(sim.per_node(&agent), vec![0, 1, 1, 1]);
    let t = sim.running(&agent)[0].clone();
    assert_eq!(t.name(), format!("agent.{}", t.node_id.as_deref().unwrap()));
}

#[test]
fn history_is_bounded_per_slot() {
    let mut sim = Sim::new(1);
    let mut s = spec("crashy", 1);
    s.task.restart.delay_ms = 0;
    let crashy = sim.create(s);
    sim.run(1);
    for _ in 0..10 {
        let t = sim.running(&crashy)[0].id.clone();
        sim.fail(&t, TaskState::Failed);
        sim.run(1);
    }
    assert_eq!(sim.world.tasks.values().filter(|t| t.service_id == crashy).count(), TASK_HISTORY);
}

#[test]
fn reports_only_move_forward_and_only_from_the_node() {
    let mut sim = Sim::new(2);
    let web = sim.create(spec("web", 1));
    sim.run(1);
    let t = sim.running(&web)[0].clone();
    let node = t.node_id.clone().unwrap();
    assert!(!sim.world.report(&t.id, &node, TaskStatus::new(TaskState::Starting, sim.now, "late")));
    let other = if node == "n1" { "n2" } else { "n1" };
    assert!(!sim.world.report(&t.id, other, TaskStatus::new(TaskState::Failed, sim.now, "not yours")));
    assert!(sim.world.report(&t.id, &node, TaskStatus::new(TaskState::Complete, sim.now, "done")));
    assert!(!sim.world.report(&t.id, &node, TaskStatus::new(TaskState::Failed, sim.now, "after the end")));
}

#[test]
fn start_first_update_whose_new_task_crashes_leaves_one_task_per_slot() {
    let mut sim = Sim::new(2);
    let mut s = spec("web", 2);
    s.update.order = UpdateOrder::StartFirst;
    s.task.restart.delay_ms = 0;
    let web = sim.create(s);
    sim.run(1);
    sim.poison = Some("BAD=1".into());
    sim.poison_early = true;
    sim.update_env(&web, "BAD=1");
    sim.run(3);
    assert_eq!(sim.update_state(&web), UpdateState::Paused);
    sim.poison = None; // the restarted new task now stays up, beside the old one
    sim.run(20);
    let mut per_slot: BTreeMap<u64, usize> = BTreeMap::new();
    for t in sim.world.tasks.values().filter(|t| t.service_id == web && t.is_runnable()) {
        *per_slot.entry(t.slot).or_default() += 1;
    }
    assert_eq!(per_slot, BTreeMap::from([(1, 1), (2, 1)]), "one runnable task per slot");
}

#[test]
fn stop_first_update_does_not_wait_for_a_task_on_a_dead_node() {
    let mut sim = Sim::new(3);
    let web = sim.create(spec("web", 3));
    sim.run(1);
    sim.update_env(&web, "V=2");
    sim.reconcile(); // first batch: an old task told to stop
    let stopping = sim.world.tasks.values().find(|t| t.desired == TaskState::Shutdown).unwrap().clone();
    let node = stopping.node_id.clone().unwrap();
    sim.nodes.iter_mut().find(|n| n.id == node).unwrap().ready = false;
    sim.run(30);
    assert_eq!(sim.update_state(&web), UpdateState::Completed);
    assert_eq!(sim.world.tasks[&stopping.id].status.state, TaskState::Orphaned);
    assert_eq!(sim.running(&web).len(), 3);
}

#[test]
fn orphaned_tasks_keep_their_address_until_their_node_returns() {
    let mut sim = Sim::new(2);
    let mut s = spec("web", 2);
    s.task.networks = vec!["front".into()];
    let web = sim.create(s);
    sim.run(1);
    sim.nodes[1].ready = false;
    sim.run(2);
    assert_eq!(sim.running(&web).len(), 2);
    assert_eq!(sim.addrs.live.len(), 3, "two running tasks and one orphan that may still run");
    sim.nodes[1].ready = true;
    sim.run(1);
    assert_eq!(sim.addrs.live.len(), 2, "its node is back: the orphan's address is free");
}

#[test]
fn scaling_down_during_an_update_is_not_a_failure_and_unplaced_tasks_shut_down() {
    let mut sim = Sim::new(3);
    let mut s = spec("web", 6);
    s.update.parallelism = 3;
    let web = sim.create(s);
    sim.run(1);
    sim.update_env(&web, "V=2");
    sim.reconcile();
    sim.set_replicas(&web, 1);
    sim.run(20);
    assert_eq!(
        sim.update_state(&web),
        UpdateState::Completed,
        "{:?}",
        sim.world.services[&web].update_status
    );
    assert_eq!(sim.running(&web).len(), 1);
    assert!(
        sim.world
            .tasks
            .values()
            .all(|t| t.status.state >= TaskState::Assigned || t.desired <= TaskState::Running),
        "no task stays new or pending once it is not wanted"
    );
}

fn port(published: u16, target: u16, protocol: &str, mode: &str) -> PortConfig {
    PortConfig {
        name: None,
        published,
        target,
        protocol: protocol.into(),
        mode: mode.into(),
        proxy_protocol: false,
        local_only: false,
    }
}

#[test]
fn published_ports_are_unique_across_services_and_left_out_ones_get_a_dynamic_port() {
    let mut sim = Sim::new(1);
    let mut web = spec("web", 1);
    web.ports = vec![port(8080, 80, "tcp", "ingress"), port(0, 443, "tcp", "ingress")];
    sim.world.publish(&mut web, None).unwrap();
    assert_eq!(web.ports[1].published, FIRST_DYNAMIC_PORT);
    let web_id = sim.create(web.clone());

    // Another service: the same port over TCP is taken, over UDP it is free.
    let mut api = spec("api", 1);
    api.ports = vec![port(8080, 80, "tcp", "ingress")];
    let err = sim.world.publish(&mut api.clone(), None).unwrap_err();
    assert_eq!(err, format!("port '8080' is already in use by service 'web' ({web_id}) as an ingress port"));
    api.ports = vec![port(8080, 53, "udp", "ingress"), port(0, 80, "tcp", "ingress")];
    sim.world.publish(&mut api, None).unwrap();
    assert_eq!(api.ports[1].published, FIRST_DYNAMIC_PORT + 1, "the next free one");
    // A host-mode port may not take a mesh port, nor the reverse.
    let mut host = spec("host", 1);
    host.ports = vec![port(8080, 80, "tcp", "host")];
    assert!(sim.world.publish(&mut host, None).unwrap_err().contains("as an ingress port"));
    host.ports = vec![port(9000, 80, "tcp", "host")];
    sim.world.publish(&mut host, None).unwrap();
    sim.create(host);
    let mut mesh = spec("mesh", 1);
    mesh.ports = vec![port(9000, 80, "tcp", "ingress")];
    assert!(sim.world.publish(&mut mesh, None).unwrap_err().contains("as a host port"));
    // A service's own ports do not conflict with themselves on update.
    sim.world.publish(&mut web, Some(&web_id)).unwrap();
    // Bad specs.
    let mut bad = spec("bad", 1);
    bad.ports = vec![port(1, 1, "tcp", "ingress"), port(1, 2, "tcp", "ingress")];
    assert!(sim.world.publish(&mut bad, None).unwrap_err().contains("duplicate published ports"));
    bad.ports = vec![port(1, 1, "sctp", "ingress")];
    assert!(sim.world.publish(&mut bad, None).unwrap_err().contains("use tcp or udp"));
    bad.ports = vec![port(0, 80, "tcp", "host")];
    assert!(sim.world.publish(&mut bad, None).unwrap_err().contains("needs a published port"));
    bad.ports = vec![port(2, 80, "tcp", "ingress")];
    bad.endpoint.mode = EndpointMode::Dnsrr;
    assert_eq!(
        sim.world.publish(&mut bad, None).unwrap_err(),
        "port published with ingress mode can't be used with dnsrr mode"
    );
}

#[test]
fn every_node_gets_a_mesh_address_once_ingress_exists_and_mesh_services_join_it() {
    let mut sim = Sim::new(3);
    sim.run(1);
    assert!(sim.world.mesh.is_empty(), "no ingress network, no mesh");
    sim.addrs.ingress = true;
    let mut s = spec("web", 2);
    s.ports = vec![port(8080, 80, "tcp", "ingress")];
    let web = sim.create(s);
    sim.run(1);
    assert_eq!(sim.world.mesh.len(), 3);
    assert!(sim.world.mesh.values().all(|a| a.network == INGRESS));
    for t in sim.running(&web) {
        let networks: Vec<&str> = t.attachments.iter().map(|a| a.network.as_str()).collect();
        assert_eq!(networks, [INGRESS], "a task of a service with a mesh port is on ingress");
    }
    // A node that leaves the swarm frees its address.
    sim.nodes.pop();
    sim.run(1);
    assert_eq!(sim.world.mesh.len(), 2);
    assert_eq!(sim.addrs.live.len(), 2 + 2, "two nodes and two tasks");
}

#[test]
fn a_task_is_assigned_with_its_services_vip_and_local_vip() {
    let mut sim = Sim::new(2);
    sim.addrs.ingress = true;
    let mut s = spec("near", 2);
    s.ports = vec![PortConfig { local_only: true, ..port(8082, 80, "tcp", "ingress") }];
    let id = sim.create(s);
    let ingress = |ip: [u8; 4]| Attachment {
        network: INGRESS.into(),
        vni: 4096,
        subnet: "10.0.0.0/8".into(),
        ip: ip.into(),
        vip: None,
        local_vip: None,
    };
    let service = sim.world.services.get_mut(&id).unwrap();
    service.vips = vec![ingress([10, 9, 0, 1])];
    service.local_vip = Some(ingress([10, 9, 0, 2]));
    // One pass: the tasks are placed, and their first assignment is what
    // a node starts them with (it announces exactly that).
    sim.reconcile();
    let assigned: Vec<&Task> =
        sim.world.tasks.values().filter(|t| t.status.state == TaskState::Assigned).collect();
    assert_eq!(assigned.len(), 2);
    for t in assigned {
        let a = &t.attachments[0];
        assert_eq!((a.vip, a.local_vip), (Some([10, 9, 0, 1].into()), Some([10, 9, 0, 2].into())), "{t:?}");
    }
}

#[test]
fn depends_on_holds_tasks_until_dependencies_run_and_are_healthy() {
    let mut sim = Sim::new(3);
    let mut web = spec("web", 2);
    web.depends_on = vec!["redis".into(), "gone".into()];
    let web = sim.create(web);
    let mut redis = spec("redis", 1);
    redis.task.health = Some(HealthCheck {
        cmd: "redis-cli ping".into(),
        interval_ms: 1_000,
        timeout_ms: 1_000,
        retries: 3,
        start_period_ms: 0,
    });
    let redis = sim.create(redis);
    sim.run(2);
    assert_eq!(sim.running(&redis).len(), 1, "the dependency starts");
    let waiting: Vec<&Task> = sim.world.tasks.values().filter(|t| t.service_id == web).collect();
    assert_eq!(waiting.len(), 2);
    for t in &waiting {
        assert_eq!(t.status.state, TaskState::Pending, "running is not enough with a healthcheck");
        assert_eq!(
            t.status.err.as_deref(),
            Some("waiting for service redis to be running and healthy (depends_on)")
        );
    }
    // The node reports the dependency healthy: the dependents are placed.
    let task = sim.running(&redis)[0].clone();
    let mut healthy = task.status.clone();
    healthy.health = Some("healthy".into());
    assert!(sim.world.report(&task.id, task.node_id.as_deref().unwrap(), healthy));
    sim.run(1);
    assert_eq!(sim.running(&web).len(), 2);
    // A dependency without a healthcheck only has to run.
    let mut db = spec("db", 1);
    db.depends_on = vec!["cache".into()];
    let db = sim.create(db);
    let cache = sim.create(spec("cache", 1));
    sim.run(2);
    assert_eq!((sim.running(&cache).len(), sim.running(&db).len()), (1, 1));
}
