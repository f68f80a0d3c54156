//! The agent's metrics, in the Prometheus text format through
//! prometheus-client. Failures the agent survives but must not hide are
//! counted as they happen ([`Metrics::failed`]); everything else is a
//! snapshot of the data plane's and gossip's own counters, taken at scrape
//! time ([`Snapshot`]), so the packet path never touches a registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_dataplane::CounterSnapshot;
use shoal_gossip::{MemberState, MemberView, Stats};

/// Work the agent failed at and carried on without: each is also logged.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Op {
    /// Recording the sandboxes a crash would leave (`<data dir>/sandboxes`).
    RecordSandboxes,
    /// Removing a sandbox's network namespace.
    RemoveSandbox,
    /// Storing a node record on the manager (heartbeat, down marking).
    StoreNode,
    /// Recording what a task leaves behind (`tasks/<id>/leftovers.json`).
    RecordTask,
    /// Removing a task's cgroup, namespace or directory.
    RemoveTask,
    /// Storing the orchestrator's world or the IPAM.
    StoreWorld,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: Op,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The counters the agent keeps itself.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    failures: Family<OpLabels, Counter>,
    tasks_started: Counter,
    log_lines_dropped: Counter,
}

/// What the data plane and gossip report at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Networks programmed into the data plane.
    pub networks: usize,
    /// The data plane's packet counters.
    pub dataplane: CounterSnapshot,
    /// Gossip's counters (zero outside a swarm).
    pub gossip: Stats,
    /// Gossip members.
    pub members: Vec<MemberView>,
    /// Table rows held, by kind.
    pub rows: shoal_gossip::RowCounts,
    /// The tasks' resolver's counters.
    pub dns: shoal_dns::Stats,
    /// Flows tracked per VIP backend.
    pub backends: Vec<shoal_dataplane::BackendFlows>,
    /// The routing mesh's ports.
    pub mesh: Vec<shoal_mesh::PortStats>,
}

fn counter(value: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(value);
    c
}

fn gauge(value: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    g
}

impl Metrics {
    /// Counts one failure of `op` (the caller logs it).
    pub fn failed(&self, op: Op) {
        self.failures.get_or_create(&OpLabels { op }).inc();
    }

    /// Counts a task whose process started on this node.
    pub fn task_started(&self) {
        self.tasks_started.inc();
    }

    /// Counts `n` log lines a task printed beyond its budget.
    pub fn log_lines_dropped(&self, n: u64) {
        self.log_lines_dropped.inc_by(n);
    }

    /// How often `op` failed.
    pub fn failures(&self, op: Op) -> u64 {
        self.failures.get_or_create(&OpLabels { op }).get()
    }

    /// The exposition: the agent's counters and `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut r = Registry::default();
        r.register(
            "shoal_agent_failures",
            "Operations the agent failed at and carried on without (each also logged), by operation.",
            self.failures.clone(),
        );
        r.register(
            "shoal_tasks_started",
            "Task processes started on this node (each run of each task).",
            self.tasks_started.clone(),
        );
        r.register(
            "shoal_task_log_lines_dropped",
            "Log lines tasks printed beyond 500 a second per stream, dropped.",
            self.log_lines_dropped.clone(),
        );
        r.register(
            "shoal_dataplane_networks",
            "Overlay networks in this node's data plane (those with a local task).",
            gauge(snapshot.networks as u64),
        );
        let g = &snapshot.gossip;
        for (name, help, value) in [
            ("shoal_gossip_datagrams_received", "Gossip datagrams received.", g.datagrams_in),
            ("shoal_gossip_datagrams_sent", "Gossip datagrams sent.", g.datagrams_out),
            ("shoal_gossip_bytes_received", "Gossip bytes received.", g.bytes_in),
            ("shoal_gossip_bytes_sent", "Gossip bytes sent.", g.bytes_out),
            ("shoal_gossip_deltas_applied", "Table deltas that were new here.", g.deltas_applied),
            ("shoal_gossip_syncs", "Anti-entropy exchanges.", g.syncs),
            (
                "shoal_gossip_sync_repairs",
                "Visible rows changed by anti-entropy, which delta gossip had missed (convergence lag).",
                g.sync_repairs,
            ),
            ("shoal_gossip_member_downs", "Times a member was declared down.", g.member_downs),
        ] {
            r.register(name, help, counter(value));
        }
        let dropped = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in &g.dropped {
            dropped.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc_by(*n);
        }
        r.register("shoal_gossip_dropped", "Gossip input dropped, by reason.", dropped);
        r.register("shoal_gossip_pending_deltas", "Deltas still being gossiped.", gauge(g.pending_deltas));
        r.register(
            "shoal_gossip_local_health",
            "Lifeguard local health score (0 is healthy).",
            gauge(u64::from(g.local_health)),
        );
        let members = Family::<StateLabels, Gauge>::default();
        for (state, label) in
            [(MemberState::Alive, "alive"), (MemberState::Suspect, "suspect"), (MemberState::Down, "down")]
        {
            let n = snapshot.members.iter().filter(|m| m.state == state).count();
            members.get_or_create(&StateLabels { state: label }).set(n as i64);
        }
        r.register("shoal_gossip_members", "Members by state, this node included.", members);
        let rows = &snapshot.rows;
        let table = Family::<KindLabels, Gauge>::default();
        for (kind, n) in [("live", rows.live), ("suspended", rows.suspended), ("tombstone", rows.tombstones)]
        {
            table.get_or_create(&KindLabels { kind }).set(n as i64);
        }
        r.register("shoal_table_rows", "Endpoint table rows held.", table);
        let dp = &snapshot.dataplane;
        r.register(
            "shoal_dataplane_encapsulated_packets",
            "Packets sent to other nodes.",
            counter(dp.encapsulated),
        );
        r.register(
            "shoal_dataplane_decapsulated_packets",
            "Packets received from other nodes.",
            counter(dp.decapsulated),
        );
        let drops = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in &dp.drops {
            drops.get_or_create(&ReasonLabels { reason: reason.to_string() }).inc_by(*n);
        }
        r.register("shoal_dataplane_dropped_packets", "Packets dropped, by reason.", drops);
        render_dns(&mut r, &snapshot.dns);
        render_conntrack(&mut r, &snapshot.dataplane.conntrack, &snapshot.backends);
        render_mesh(&mut r, &snapshot.mesh);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String cannot fail");
        out
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RcodeLabels {
    rcode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DnsDropLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vni: u32,
    vip: String,
    backend: String,
}

/// Connection tracking and VIP NAT, and the flows of each VIP backend.
fn render_conntrack(
    r: &mut Registry,
    ct: &shoal_dataplane::ConntrackCounters,
    backends: &[shoal_dataplane::BackendFlows],
) {
    r.register("shoal_conntrack_entries", "Flows to service VIPs tracked now.", gauge(ct.entries));
    r.register("shoal_conntrack_capacity", "The most flows the connection table holds.", gauge(ct.capacity));
    for (name, help, value) in [
        ("shoal_conntrack_created", "Flows to service VIPs created.", ct.created),
        ("shoal_conntrack_expired", "Flows that timed out.", ct.expired),
        ("shoal_conntrack_evicted", "Flows removed early to make room at the table's bound.", ct.evicted),
        (
            "shoal_conntrack_removed",
            "Flows removed because their VIP, backend, network or client went.",
            ct.removed,
        ),
        ("shoal_vip_nat_forward", "Packets to a VIP rewritten to a backend.", ct.nat_forward),
        ("shoal_vip_nat_reverse", "Replies rewritten back to the VIP.", ct.nat_reverse),
        ("shoal_vip_echo_replies", "Pings to a VIP answered by the data plane.", ct.echo_replies),
    ] {
        r.register(name, help, counter(value));
    }
    let flows = Family::<BackendLabels, Gauge>::default();
    for b in backends {
        let labels =
            BackendLabels { vni: b.vni.get(), vip: b.vip.to_string(), backend: b.backend.to_string() };
        flows.get_or_create(&labels).set(i64::try_from(b.flows).unwrap_or(i64::MAX));
    }
    r.register("shoal_vip_backend_flows", "Flows tracked to each backend of each VIP.", flows);
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: u16,
    protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortDirectionLabels {
    port: u16,
    protocol: &'static str,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortReasonLabels {
    port: u16,
    protocol: &'static str,
    reason: &'static str,
}

/// The routing mesh's counters, per published port (the backends' flows
/// are the VIP backends' on `ingress`, above).
fn render_mesh(r: &mut Registry, ports: &[shoal_mesh::PortStats]) {
    let label =
        |p: &shoal_mesh::PortStats| PortLabels { port: p.key.port, protocol: p.key.protocol.as_str() };
    type Pick = fn(&shoal_mesh::PortStats) -> u64;
    let counters: [(&str, &str, Pick); 8] = [
        ("shoal_mesh_connections", "TCP connections accepted and relayed, per published port.", |p| {
            p.accepted
        }),
        ("shoal_mesh_refused", "TCP connections refused at the port's connection limit.", |p| p.refused),
        (
            "shoal_mesh_backend_failures",
            "Connections and UDP flows that got no backend (none, refused, timed out).",
            |p| p.failed,
        ),
        ("shoal_mesh_backend_timeouts", "Of the backend failures, those over the connect timeout.", |p| {
            p.timed_out
        }),
        (
            "shoal_mesh_relay_errors",
            "TCP relays that ended on an error rather than both sides closing.",
            |p| p.relay_errors,
        ),
        ("shoal_mesh_accept_errors", "Failed accepts.", |p| p.accept_errors),
        ("shoal_mesh_udp_flows", "UDP flows that got a backend.", |p| p.flows_created),
        ("shoal_mesh_receive_errors", "Errors receiving on UDP sockets.", |p| p.receive_errors),
    ];
    for (name, help, pick) in counters {
        let family = Family::<PortLabels, Counter>::default();
        for p in ports {
            family.get_or_create(&label(p)).inc_by(pick(p));
        }
        r.register(name, help, family);
    }
    let gauges: [(&str, &str, Pick); 3] = [
        ("shoal_mesh_listening", "Whether the published port is open on this node (1) or not (0).", |p| {
            u64::from(p.listening)
        }),
        ("shoal_mesh_active_connections", "TCP connections open now.", |p| p.active),
        ("shoal_mesh_active_udp_flows", "UDP flows now.", |p| p.flows_active),
    ];
    for (name, help, pick) in gauges {
        let family = Family::<PortLabels, Gauge>::default();
        for p in ports {
            family.get_or_create(&label(p)).set(i64::try_from(pick(p)).unwrap_or(i64::MAX));
        }
        r.register(name, help, family);
    }
    let bytes = Family::<PortDirectionLabels, Counter>::default();
    let datagrams = Family::<PortDirectionLabels, Counter>::default();
    let dropped = Family::<PortReasonLabels, Counter>::default();
    for p in ports {
        let (port, protocol) = (p.key.port, p.key.protocol.as_str());
        for (direction, b, d) in [
            ("to_backend", p.bytes_to_backend, p.datagrams_to_backend),
            ("to_client", p.bytes_to_client, p.datagrams_to_client),
        ] {
            bytes.get_or_create(&PortDirectionLabels { port, protocol, direction }).inc_by(b);
            datagrams.get_or_create(&PortDirectionLabels { port, protocol, direction }).inc_by(d);
        }
        let u = &p.dropped;
        for (reason, n) in [
            ("flow_limit", u.flow_limit),
            ("no_backend", u.no_backend),
            ("queue_full", u.queue_full),
            ("to_backend", u.to_backend),
            ("to_client", u.to_client),
        ] {
            dropped.get_or_create(&PortReasonLabels { port, protocol, reason }).inc_by(n);
        }
    }
    r.register("shoal_mesh_bytes", "TCP bytes relayed, per published port and direction.", bytes);
    r.register("shoal_mesh_datagrams", "UDP datagrams relayed, per published port and direction.", datagrams);
    r.register("shoal_mesh_udp_dropped", "UDP datagrams dropped, per published port and reason.", dropped);
}

/// The resolver's counters: queries by type, answers by rcode, forwards,
/// drops by reason.
fn render_dns(r: &mut Registry, dns: &shoal_dns::Stats) {
    use shoal_dns::{DropReason, QueryKind, Rcode};
    let queries = Family::<TypeLabels, Counter>::default();
    for kind in QueryKind::ALL {
        queries.get_or_create(&TypeLabels { r#type: kind.as_str() }).inc_by(dns.queries(kind));
    }
    r.register("shoal_dns_queries", "Queries tasks asked their resolver, by type.", queries);
    let responses = Family::<RcodeLabels, Counter>::default();
    for rcode in Rcode::ALL {
        responses.get_or_create(&RcodeLabels { rcode: rcode.as_str() }).inc_by(dns.responses(rcode));
    }
    r.register("shoal_dns_responses", "Responses sent, answered or relayed, by response code.", responses);
    let drops = Family::<DnsDropLabels, Counter>::default();
    for reason in DropReason::ALL {
        drops.get_or_create(&DnsDropLabels { reason: reason.as_str() }).inc_by(dns.drops(reason));
    }
    r.register("shoal_dns_dropped", "Messages dropped unanswered, by reason.", drops);
    for (name, help, value) in [
        ("shoal_dns_forwarded", "Queries for unknown names sent to the upstream resolvers.", dns.forwarded),
        (
            "shoal_dns_forward_timeouts",
            "Forwards answered SERVFAIL: no upstream answered in time.",
            dns.forward_timeouts,
        ),
        (
            "shoal_dns_forward_failures",
            "Forwards answered SERVFAIL: no upstream, or every one failed.",
            dns.forward_failures,
        ),
        (
            "shoal_dns_forwards_refused",
            "Queries answered SERVFAIL at once: too many forwards in flight.",
            dns.forwards_refused,
        ),
        ("shoal_dns_truncated", "Answers cut to the client's UDP size, with TC set.", dns.truncated),
    ] {
        r.register(name, help, counter(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_typed_and_labelled() {
        let metrics = Metrics::default();
        metrics.failed(Op::StoreNode);
        metrics.failed(Op::StoreNode);
        let mut snapshot = Snapshot { networks: 2, ..Snapshot::default() };
        snapshot.gossip.dropped.insert("unauthenticated".into(), 5);
        let text = metrics.render(&snapshot);
        assert!(
            text.contains("# TYPE shoal_dataplane_networks gauge\nshoal_dataplane_networks 2\n"),
            "{text}"
        );
        assert!(text.contains("shoal_agent_failures_total{op=\"StoreNode\"} 2\n"), "{text}");
        assert!(text.contains("shoal_gossip_dropped_total{reason=\"unauthenticated\"} 5\n"), "{text}");
        assert!(text.contains("shoal_gossip_members{state=\"alive\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE shoal_gossip_member_downs counter\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(metrics.failures(Op::StoreNode), 2);
    }
}
