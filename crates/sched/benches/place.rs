//! Placing 10,000 tasks on 1,000 nodes with a constraint, a spread
//! preference and a memory reservation: the target is under 100 ms.
//! Baseline: one pass over the nodes per task computing only the filters
//! (what a naive scheduler costs before choosing anything).

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shoal_sched::{Availability, Node, Requirements, place};

fn cluster() -> Vec<Node> {
    (0..1000)
        .map(|i| Node {
            id: format!("id{i}"),
            hostname: format!("node{i}"),
            role: "worker".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: BTreeMap::from([
                ("zone".to_owned(), format!("z{}", i % 5)),
                ("ssd".to_owned(), "yes".to_owned()),
            ]),
            ready: true,
            availability: Availability::Active,
            free_nano_cpus: 8_000_000_000,
            free_memory: 64 << 30,
            tasks: i % 7,
            tasks_by_service: HashMap::new(),
            host_ports: HashSet::new(),
        })
        .collect()
}

fn requirements() -> Requirements {
    Requirements {
        service: "web".into(),
        constraints: vec!["node.labels.ssd==yes".parse().unwrap()],
        spread: vec!["zone".into()],
        reserve_memory: 64 << 20,
        ..Requirements::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("place_10k_tasks_1k_nodes");
    group.sample_size(20);
    let nodes = cluster();
    let req = requirements();
    group.bench_function("baseline_filter_pass_per_task", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for _ in 0..10_000 {
                hits +=
                    nodes.iter().filter(|n| n.ready && req.constraints.iter().all(|c| c.matches(n))).count();
            }
            black_box(hits)
        })
    });
    group.bench_function("place", |b| {
        b.iter_batched(
            cluster,
            |mut nodes| {
                let placed = place(&mut nodes, &req, 10_000);
                assert!(placed.iter().all(Result::is_ok));
                black_box(placed)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
