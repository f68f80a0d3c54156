//! DNS inside every task: shoal-dns's resolver over this node's service
//! directory, served on 127.0.0.11:53 (UDP and TCP) in each sandbox. One
//! server serves every sandbox; each sandbox's sockets know its networks,
//! so a task resolves only names of the networks it is attached to.
//! Unknown names go to the node's upstream resolvers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_dns::{Addresses, Proto, Scope, Serving, SrvTarget};
use shoal_orch::EndpointMode;
use shoal_runtime::NetNs;

use crate::directory::{Found, ServiceDirectory};
use crate::error::Error;

/// Where tasks' resolvers listen, inside each task, as docker's.
pub const RESOLVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// How long an upstream may take before the task gets SERVFAIL.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries forwarded at once, node-wide.
const MAX_FORWARDS: usize = 256;
/// TCP connections at once, per sandbox.
const MAX_TCP: usize = 16;

/// The directory as the resolver reads it.
#[derive(Debug)]
pub struct Names(pub Arc<ServiceDirectory>);

impl Names {
    /// The first of `scope`'s networks where `f` finds something.
    fn first<T>(&self, scope: &Scope, f: impl Fn(&crate::directory::NetworkIndex) -> Option<T>) -> Option<T> {
        self.0.read(|index| scope.networks.iter().filter_map(|vni| index.networks.get(vni)).find_map(f))
    }
}

impl shoal_dns::Directory for Names {
    fn lookup(&self, scope: &Scope, name: &str) -> Option<Addresses> {
        self.first(scope, |net| {
            Some(match net.find(name)? {
                Found::Service(s) => Addresses { addrs: s.addresses(), ttl: s.endpoint.dns_ttl_secs },
                Found::Tasks(s) => Addresses { addrs: s.serving().collect(), ttl: s.endpoint.dns_ttl_secs },
                Found::Task(ip, s) => Addresses { addrs: vec![ip], ttl: s.endpoint.dns_ttl_secs },
            })
        })
    }

    fn reverse(&self, scope: &Scope, addr: Ipv4Addr) -> Option<(String, u32)> {
        self.first(scope, |net| net.reverse(addr).map(|(name, ttl)| (name.to_owned(), ttl)))
    }

    fn srv(&self, scope: &Scope, service: &str, port: &str, proto: Proto) -> Option<Vec<SrvTarget>> {
        let protocol = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        self.first(scope, |net| {
            let s = net.service(service)?;
            let p = s.ports.iter().find(|p| {
                p.protocol == protocol
                    && (p.name.as_deref() == Some(port)
                        || port.parse::<u16>().is_ok_and(|n| n == p.target || n == p.published))
            })?;
            let ttl = s.endpoint.dns_ttl_secs;
            Some(match (s.endpoint.mode, s.vip) {
                (EndpointMode::Vip, Some(vip)) => {
                    vec![SrvTarget { target: s.name.clone(), port: p.target, addr: vip, ttl }]
                }
                _ => s
                    .tasks
                    .iter()
                    .filter(|t| t.serves())
                    .map(|t| SrvTarget { target: t.name.clone(), port: p.target, addr: t.ip, ttl })
                    .collect(),
            })
        })
    }
}

/// The node's resolver for its tasks.
#[derive(Debug, Clone)]
pub struct Dns {
    server: shoal_dns::Server,
}

impl Dns {
    /// Answers from `directory`, forwarding unknown names to `upstreams`.
    pub fn new(directory: Arc<ServiceDirectory>, upstreams: Vec<SocketAddr>) -> Dns {
        let config = shoal_dns::Config {
            upstreams,
            upstream_timeout: UPSTREAM_TIMEOUT,
            max_forwards: MAX_FORWARDS,
            max_tcp_connections: MAX_TCP,
        };
        Dns { server: shoal_dns::Server::new(Arc::new(Names(directory)), config) }
    }

    /// Opens 127.0.0.11:53 (UDP and TCP) inside `netns` and serves it for a
    /// sandbox on `networks`, until the returned guard drops.
    pub fn serve(&self, netns: &NetNs, networks: Vec<u32>) -> Result<Serving, Error> {
        let address = SocketAddr::from((RESOLVER, 53));
        let bound = netns
            .run(move || -> std::io::Result<_> {
                Ok((std::net::UdpSocket::bind(address)?, std::net::TcpListener::bind(address)?))
            })
            .map_err(Error::internal)?;
        let (udp, tcp) = bound.map_err(Error::io(format!("bind {address} in {}", netns.name())))?;
        self.server.serve(Scope { networks }, udp, tcp).map_err(Error::io("serve DNS"))
    }

    /// The resolver's counters.
    pub fn stats(&self) -> shoal_dns::Stats {
        self.server.stats()
    }
}

/// The resolv.conf of a task: the resolver at 127.0.0.11, `ndots:0`, and
/// the node's search domains, as docker writes it.
pub fn task_resolv_conf(node_resolv_conf: &str) -> String {
    let mut text = format!("nameserver {RESOLVER}\n");
    for line in node_resolv_conf.lines() {
        let mut words = line.split_whitespace();
        if matches!(words.next(), Some("search" | "domain")) {
            let domains: Vec<&str> = words.collect();
            if !domains.is_empty() {
                text.push_str(&format!("search {}\n", domains.join(" ")));
            }
        }
    }
    text.push_str("options ndots:0\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{RowState, TaskRow};
    use shoal_dns::Directory as _;
    use shoal_orch::{EndpointConfig, PortConfig};

    fn directory() -> Arc<ServiceDirectory> {
        let dir = Arc::new(ServiceDirectory::default());
        for (slot, ip, healthy) in [(1, [10, 0, 1, 10], true), (2, [10, 0, 1, 11], false)] {
            let row = TaskRow {
                service_id: "s1".into(),
                service: "web".into(),
                stack: None,
                aliases: vec!["www".into()],
                task_id: format!("t{slot}"),
                task: format!("web.{slot}.t{slot}"),
                ip: ip.into(),
                node: [198, 18, 0, 1].into(),
                vip: Some([10, 0, 1, 2].into()),
                local_vip: None,
                state: RowState::Running,
                healthy,
                endpoint: EndpointConfig { dns_ttl_secs: 7, ..EndpointConfig::default() },
                ports: vec![PortConfig {
                    name: Some("http".into()),
                    published: 8080,
                    target: 80,
                    protocol: "tcp".into(),
                    mode: "ingress".into(),
                    proxy_protocol: false,
                    local_only: false,
                }],
            };
            dir.set_local(4096, &format!("t{slot}"), Some(row));
        }
        dir
    }

    #[test]
    fn names_are_scoped_to_the_askers_networks() {
        let names = Names(directory());
        let here = Scope { networks: vec![4096] };
        let vip = Addresses { addrs: vec![[10, 0, 1, 2].into()], ttl: 7 };
        assert_eq!(names.lookup(&here, "web"), Some(vip.clone()));
        assert_eq!(names.lookup(&here, "www"), Some(vip));
        assert_eq!(names.lookup(&here, "tasks.web").unwrap().addrs, [Ipv4Addr::new(10, 0, 1, 10)]);
        assert_eq!(names.lookup(&here, "web.2.t2").unwrap().addrs, [Ipv4Addr::new(10, 0, 1, 11)]);
        assert_eq!(names.lookup(&Scope { networks: vec![4097] }, "web"), None, "another network's name");
        assert_eq!(names.reverse(&here, [10, 0, 1, 2].into()), Some(("web".into(), 7)));
    }

    #[test]
    fn srv_by_port_name_or_number() {
        let names = Names(directory());
        let here = Scope { networks: vec![4096] };
        for port in ["http", "80", "8080"] {
            let targets = names.srv(&here, "web", port, Proto::Tcp).unwrap();
            assert_eq!((targets[0].target.as_str(), targets[0].port), ("web", 80), "{port}");
        }
        assert!(names.srv(&here, "web", "http", Proto::Udp).is_none());
        assert!(names.srv(&here, "web", "443", Proto::Tcp).is_none());
    }

    #[test]
    fn task_resolv_conf_points_at_the_resolver() {
        let text = task_resolv_conf("nameserver 127.0.0.53\nsearch example.org lab\noptions edns0\n");
        assert_eq!(text, "nameserver 127.0.0.11\nsearch example.org lab\noptions ndots:0\n");
    }
}
