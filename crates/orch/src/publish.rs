//! Published ports, checked as swarmkit's allocator does: each ingress port
//! is held by one service in the whole swarm, a port left out gets the
//! lowest free one from [`FIRST_DYNAMIC_PORT`], and a host-mode port may not
//! take a port the routing mesh holds on every node. Also the routing
//! mesh's own address on each node ([`World::mesh`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::*;
use crate::reconcile::{Env, World};

/// Who holds a port, for the conflict message.
struct Holder<'a> {
    service: &'a Service,
    mode: &'a str,
}

impl World {
    /// Checks `spec`'s ports against themselves and every other service
    /// (`except` is the service being updated), and gives each ingress
    /// port published as 0 the lowest free port from
    /// [`FIRST_DYNAMIC_PORT`]. The error is docker's wording.
    pub fn publish(&self, spec: &mut ServiceSpec, except: Option<&str>) -> Result<(), String> {
        let mut held: BTreeMap<(String, u16), Holder<'_>> = BTreeMap::new();
        for service in self.services.values().filter(|s| Some(s.id.as_str()) != except) {
            for p in &service.spec.ports {
                // A mesh port is everywhere; a host port only where its
                // tasks run, so two services may share it (never a node).
                if p.mode == "ingress" || !held.contains_key(&(p.protocol.clone(), p.published)) {
                    held.insert((p.protocol.clone(), p.published), Holder { service, mode: &p.mode });
                }
            }
        }
        let mut own = BTreeSet::new();
        for p in &spec.ports {
            if p.protocol != "tcp" && p.protocol != "udp" {
                return Err(format!(
                    "invalid protocol \"{}\" for port {}: use tcp or udp",
                    p.protocol, p.target
                ));
            }
            if p.mode != "ingress" && p.mode != "host" {
                return Err(format!(
                    "invalid publish mode \"{}\" for port {}: use ingress or host",
                    p.mode, p.target
                ));
            }
            if p.target == 0 {
                return Err("invalid target port 0: use a port from 1 to 65535".into());
            }
            if p.mode == "host" && p.published == 0 {
                return Err(format!(
                    "port {} in host mode needs a published port: add published=PORT",
                    p.target
                ));
            }
            if p.mode == "ingress" && spec.endpoint.mode == EndpointMode::Dnsrr {
                return Err("port published with ingress mode can't be used with dnsrr mode".into());
            }
            if p.published != 0 && !own.insert((p.protocol.clone(), p.published)) {
                return Err(format!(
                    "EndpointSpec: duplicate published ports provided ({}/{})",
                    p.published, p.protocol
                ));
            }
            if p.published == 0 {
                continue;
            }
            if let Some(h) = held.get(&(p.protocol.clone(), p.published))
                && (p.mode == "ingress" || h.mode == "ingress")
            {
                return Err(format!(
                    "port '{}' is already in use by service '{}' ({}) as {} port",
                    p.published,
                    h.service.spec.name,
                    h.service.id,
                    if h.mode == "ingress" { "an ingress" } else { "a host" }
                ));
            }
        }
        for p in spec.ports.iter_mut().filter(|p| p.published == 0) {
            let free = (FIRST_DYNAMIC_PORT..=LAST_DYNAMIC_PORT).find(|&port| {
                let key = (p.protocol.clone(), port);
                !held.contains_key(&key) && !own.contains(&key)
            });
            let Some(port) = free else {
                return Err(format!(
                    "no free port left in the dynamic range {FIRST_DYNAMIC_PORT}-{LAST_DYNAMIC_PORT}: \
                     publish port {} on a port of your choice",
                    p.target
                ));
            };
            p.published = port;
            own.insert((p.protocol.clone(), port));
        }
        Ok(())
    }

    /// Gives every known node an address on the [`INGRESS`] network (its
    /// routing mesh's), once the network exists, and frees the addresses
    /// of nodes that left.
    pub(crate) fn sync_mesh(&mut self, env: &mut Env<'_>) {
        let known: BTreeSet<&str> = env.nodes.iter().map(|n| n.id.as_str()).collect();
        let gone: Vec<String> = self.mesh.keys().filter(|id| !known.contains(id.as_str())).cloned().collect();
        for id in gone {
            let a = self.mesh.remove(&id).expect("listed");
            env.alloc.release(&a);
        }
        for node in env.nodes {
            if self.mesh.contains_key(&node.id) {
                continue;
            }
            match env.alloc.allocate(INGRESS) {
                Ok(a) => {
                    self.mesh.insert(node.id.clone(), a);
                }
                // No ingress network (yet): no routing mesh.
                Err(_) => return,
            }
        }
    }
}
