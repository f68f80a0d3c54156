use super::*;
use proptest::prelude::*;

fn node(i: usize) -> Node {
    Node {
        id: format!("id{i}"),
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

fn nodes(n: usize) -> Vec<Node> {
    (1..=n).map(node).collect()
}

fn web() -> Requirements {
    Requirements { service: "web".into(), ..Requirements::default() }
}

fn counts(nodes: &[Node], service: &str) -> Vec<usize> {
    nodes.iter().map(|n| n.tasks_by_service.get(service).copied().unwrap_or(0)).collect()
}

#[test]
fn five_replicas_on_three_nodes_spread_two_two_one() {
    let mut ns = nodes(3);
    let placed = place(&mut ns, &web(), 5);
    assert!(placed.iter().all(Result::is_ok));
    let mut c = counts(&ns, "web");
    c.sort();
    assert_eq!(c, [1, 2, 2]);
}

#[test]
fn spread_prefers_nodes_with_fewer_tasks_in_all() {
    let mut ns = nodes(3);
    ns[0].tasks = 10;
    ns[1].tasks = 5;
    let placed = place(&mut ns, &web(), 1);
    assert_eq!(placed, [Ok(2)]);
}

#[test]
fn constraints_place_only_on_matching_nodes_or_say_why() {
    let mut ns = nodes(3);
    ns[1].labels.insert("zone".into(), "east".into());
    let req = Requirements { constraints: vec!["node.labels.zone==east".parse().unwrap()], ..web() };
    assert_eq!(place(&mut ns, &req, 3), [Ok(1), Ok(1), Ok(1)]);
    let req = Requirements { constraints: vec!["node.labels.zone==west".parse().unwrap()], ..web() };
    let placed = place(&mut ns, &req, 1);
    assert_eq!(
        placed[0].clone().unwrap_err().reason,
        "no suitable node (scheduling constraints not satisfied on 3 nodes)"
    );
    let req = Requirements { constraints: vec!["node.role!=manager".parse().unwrap()], ..web() };
    let placed = place(&mut nodes(3), &req, 4);
    assert!(placed.iter().all(|p| p.as_ref().is_ok_and(|i| *i != 0)), "{placed:?}");
    let req = Requirements { constraints: vec!["node.hostname==NODE3".parse().unwrap()], ..web() };
    assert_eq!(place(&mut nodes(3), &req, 1), [Ok(2)], "values compare without case, as in Swarm");
}

#[test]
fn unavailable_nodes_take_nothing() {
    let mut ns = nodes(3);
    ns[0].availability = Availability::Drain;
    ns[1].availability = Availability::Pause;
    ns[2].ready = false;
    let placed = place(&mut ns, &web(), 1);
    assert_eq!(
        placed[0].clone().unwrap_err().reason,
        "no suitable node (3 nodes not available for new tasks)"
    );
}

#[test]
fn reservations_fill_nodes_then_tasks_wait() {
    let mut ns = nodes(2);
    let req = Requirements { reserve_memory: 400 << 20, ..web() };
    let placed = place(&mut ns, &req, 5);
    assert_eq!(placed.iter().filter(|p| p.is_ok()).count(), 4);
    assert_eq!(placed[4].clone().unwrap_err().reason, "no suitable node (insufficient resources on 2 nodes)");
    assert!(ns.iter().all(|n| n.free_memory == (1 << 30) - 2 * (400 << 20)));
}

#[test]
fn max_replicas_per_node_and_host_ports_are_honoured() {
    let mut ns = nodes(2);
    let req = Requirements { max_replicas_per_node: Some(1), ..web() };
    let placed = place(&mut ns, &req, 3);
    assert_eq!(
        placed[2].clone().unwrap_err().reason,
        "no suitable node (max replicas per node limit exceed on 2 nodes)"
    );
    let mut ns = nodes(2);
    ns[0].host_ports.insert(("tcp".into(), 80));
    let req = Requirements { host_ports: vec![("tcp".into(), 80)], ..web() };
    let placed = place(&mut ns, &req, 2);
    assert_eq!(placed[0], Ok(1));
    assert_eq!(
        placed[1].clone().unwrap_err().reason,
        "no suitable node (host-mode port already in use on 2 nodes)"
    );
}

#[test]
fn spread_preferences_balance_label_values_first() {
    let mut ns = nodes(4);
    ns[0].labels.insert("zone".into(), "a".into());
    for n in &mut ns[1..] {
        n.labels.insert("zone".into(), "b".into());
    }
    let req = Requirements { spread: vec!["zone".into()], ..web() };
    let placed = place(&mut ns, &req, 4);
    assert_eq!(placed.iter().filter(|p| **p == Ok(0)).count(), 2, "zone a gets half: {placed:?}");
}

#[test]
fn bad_constraints_say_what_to_write() {
    for bad in ["node.labels.zone=east", "node.color==red", "node.labels.==x", "node.id=="] {
        let err = bad.parse::<Constraint>().unwrap_err();
        assert!(err.to_string().contains("FIELD==VALUE"), "{bad}: {err}");
    }
}

#[test]
fn an_empty_swarm_says_so() {
    let placed = place(&mut [], &web(), 1);
    assert_eq!(placed[0].clone().unwrap_err().reason, "no suitable node (no nodes in the swarm)");
}

proptest! {
    /// On identical nodes with no limits, replicas stay within one of each
    /// other, and every node's resources stay non-negative by construction.
    #[test]
    fn identical_nodes_stay_balanced(n in 1usize..20, tasks in 0usize..100, before in proptest::collection::vec(0usize..5, 20)) {
        let mut ns = nodes(n);
        for (node, t) in ns.iter_mut().zip(&before) {
            node.tasks = *t;
        }
        let placed = place(&mut ns, &web(), tasks);
        prop_assert!(placed.iter().all(Result::is_ok));
        let c = counts(&ns, "web");
        prop_assert_eq!(c.iter().sum::<usize>(), tasks);
        prop_assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{:?}", c);
    }
}
