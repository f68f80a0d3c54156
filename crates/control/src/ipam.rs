//! Address management on the manager: overlay networks get a subnet (a /24
//! from the default pool unless one is asked for) and a VNI (from 4096
//! up); tasks and service VIPs get addresses inside it. The network address,
//! the gateway (`.1`, as Docker reserves it) and the broadcast address are
//! never handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use shoal_wire::ip::Ipv4Cidr;

/// The first VNI given to a network, as Swarm does.
pub const FIRST_VNI: u32 = 4096;

/// The VNI of the routing mesh's `ingress` network, below every other.
pub const INGRESS_VNI: u32 = FIRST_VNI - 1;

/// The subnet of the `ingress` network: room for a task of every service
/// with a published port, a VIP each, and an address per node.
pub const INGRESS_SUBNET: &str = "10.255.0.0/16";

/// Why an allocation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A network of this name exists.
    #[error("network with name {0} already exists")]
    NameInUse(String),
    /// No such network.
    #[error("network {0} not found")]
    UnknownNetwork(String),
    /// The subnet overlaps one in use.
    #[error("subnet {asked} overlaps network {network} ({existing}): choose another --subnet")]
    Overlap {
        /// What was asked.
        asked: String,
        /// The network in the way.
        network: String,
        /// Its subnet.
        existing: String,
    },
    /// The default pool has no free subnet left.
    #[error("the address pool {0} is exhausted: remove networks or pass --subnet")]
    PoolExhausted(String),
    /// The network has no free address left.
    #[error("network {0} has no free address left")]
    NetworkFull(String),
    /// The asked address cannot be given.
    #[error("address {ip} is not available in network {network}")]
    Unavailable {
        /// The network.
        network: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// The subnet is too small to hold anything.
    #[error("subnet {0} is too small: use a /29 or larger")]
    TooSmall(String),
}

/// One network's allocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAlloc {
    /// VXLAN network identifier.
    pub vni: u32,
    /// Subnet, as `10.0.1.0/24`.
    pub subnet: String,
    /// Addresses handed out.
    pub used: BTreeSet<Ipv4Addr>,
}

impl NetworkAlloc {
    fn cidr(&self) -> Ipv4Cidr {
        self.subnet.parse().expect("stored subnets are valid")
    }

    /// The gateway address (reserved).
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr().network()) + 1)
    }
}

/// Every network's allocations, serialisable into the cluster store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    pool: String,
    prefix: u8,
    networks: BTreeMap<String, NetworkAlloc>,
}

fn overlaps(a: Ipv4Cidr, b: Ipv4Cidr) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

impl Ipam {
    /// Networks carved as `/prefix` subnets from `pool` (Swarm: 10.0.0.0/8
    /// in /24s).
    pub fn new(pool: Ipv4Cidr, prefix: u8) -> Ipam {
        Ipam { pool: pool.to_string(), prefix: prefix.clamp(pool.prefix(), 29), networks: BTreeMap::new() }
    }

    /// Creates a network, with `subnet` or the first free one of the pool,
    /// and the lowest free VNI from [`FIRST_VNI`].
    pub fn create(&mut self, name: &str, subnet: Option<Ipv4Cidr>) -> Result<NetworkAlloc, IpamError> {
        let vnis: BTreeSet<u32> = self.networks.values().map(|a| a.vni).collect();
        let vni = (FIRST_VNI..).find(|v| !vnis.contains(v)).expect("fewer networks than VNIs");
        self.create_with_vni(name, subnet, vni)
    }

    /// Creates the routing mesh's network: [`INGRESS_SUBNET`] and
    /// [`INGRESS_VNI`].
    pub fn create_ingress(&mut self, name: &str) -> Result<NetworkAlloc, IpamError> {
        let subnet = INGRESS_SUBNET.parse().expect("a valid subnet");
        self.create_with_vni(name, Some(subnet), INGRESS_VNI)
    }

    fn create_with_vni(
        &mut self,
        name: &str,
        subnet: Option<Ipv4Cidr>,
        vni: u32,
    ) -> Result<NetworkAlloc, IpamError> {
        if self.networks.contains_key(name) {
            return Err(IpamError::NameInUse(name.to_owned()));
        }
        let subnet = match subnet {
            Some(s) => {
                if s.prefix() > 29 {
                    return Err(IpamError::TooSmall(s.to_string()));
                }
                if let Some((n, a)) = self.networks.iter().find(|(_, a)| overlaps(a.cidr(), s)) {
                    return Err(IpamError::Overlap {
                        asked: s.to_string(),
                        network: n.clone(),
                        existing: a.subnet.clone(),
                    });
                }
                s
            }
            None => self.free_subnet()?,
        };
        let alloc = NetworkAlloc { vni, subnet: subnet.to_string(), used: BTreeSet::new() };
        self.networks.insert(name.to_owned(), alloc.clone());
        Ok(alloc)
    }

    fn free_subnet(&self) -> Result<Ipv4Cidr, IpamError> {
        let pool: Ipv4Cidr = self.pool.parse().expect("valid pool");
        let step = 1u64 << (32 - u32::from(self.prefix));
        let start = u64::from(u32::from(pool.network()));
        let end = start + (1u64 << (32 - u32::from(pool.prefix())));
        let mut at = start;
        while at < end {
            let candidate = Ipv4Cidr::new(Ipv4Addr::from(at as u32), self.prefix).expect("aligned");
            if !self.networks.values().any(|a| overlaps(a.cidr(), candidate)) {
                return Ok(candidate);
            }
            at += step;
        }
        Err(IpamError::PoolExhausted(self.pool.clone()))
    }

    /// Removes a network and its allocations.
    pub fn remove(&mut self, name: &str) -> Result<NetworkAlloc, IpamError> {
        self.networks.remove(name).ok_or_else(|| IpamError::UnknownNetwork(name.to_owned()))
    }

    /// A network's allocations.
    pub fn network(&self, name: &str) -> Option<&NetworkAlloc> {
        self.networks.get(name)
    }

    /// Hands out `wanted`, or the lowest free address, in `network`.
    pub fn allocate(&mut self, network: &str, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let alloc =
            self.networks.get_mut(network).ok_or_else(|| IpamError::UnknownNetwork(network.to_owned()))?;
        let cidr = alloc.cidr();
        let first = u32::from(cidr.network()) + 2;
        let last = u32::from(cidr.broadcast()) - 1;
        let ip = match wanted {
            Some(ip) => {
                let n = u32::from(ip);
                if n < first || n > last || alloc.used.contains(&ip) {
                    return Err(IpamError::Unavailable { network: network.to_owned(), ip });
                }
                ip
            }
            None => (first..=last)
                .map(Ipv4Addr::from)
                .find(|ip| !alloc.used.contains(ip))
                .ok_or_else(|| IpamError::NetworkFull(network.to_owned()))?,
        };
        alloc.used.insert(ip);
        Ok(ip)
    }

    /// Returns an address; returns whether it was handed out.
    pub fn release(&mut self, network: &str, ip: Ipv4Addr) -> bool {
        self.networks.get_mut(network).is_some_and(|a| a.used.remove(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam() -> Ipam {
        Ipam::new("10.0.0.0/8".parse().unwrap(), 24)
    }

    #[test]
    fn networks_get_successive_subnets_and_vnis() {
        let mut ipam = ipam();
        let a = ipam.create("a", None).unwrap();
        let b = ipam.create("b", None).unwrap();
        assert_eq!((a.subnet.as_str(), a.vni), ("10.0.0.0/24", 4096));
        assert_eq!((b.subnet.as_str(), b.vni), ("10.0.1.0/24", 4097));
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        ipam.remove("a").unwrap();
        let c = ipam.create("c", None).unwrap();
        assert_eq!((c.subnet.as_str(), c.vni), ("10.0.0.0/24", 4096), "freed subnet and VNI are reused");
    }

    #[test]
    fn explicit_subnets_must_not_overlap_and_auto_ones_step_around_them() {
        let mut ipam = ipam();
        ipam.create("mine", Some("10.0.0.0/16".parse().unwrap())).unwrap();
        let auto = ipam.create("auto", None).unwrap();
        assert_eq!(auto.subnet, "10.1.0.0/24");
        let err = ipam.create("clash", Some("10.0.5.0/24".parse().unwrap())).unwrap_err();
        assert!(err.to_string().contains("overlaps network mine"), "{err}");
        assert_eq!(ipam.create("mine", None).unwrap_err(), IpamError::NameInUse("mine".into()));
        assert!(matches!(
            ipam.create("tiny", Some("192.168.0.0/30".parse().unwrap())),
            Err(IpamError::TooSmall(_))
        ));
    }

    #[test]
    fn addresses_skip_network_gateway_and_broadcast() {
        let mut ipam = ipam();
        ipam.create("n", Some("192.168.7.0/29".parse().unwrap())).unwrap();
        let got: Vec<Ipv4Addr> = (0..5).map(|_| ipam.allocate("n", None).unwrap()).collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(192, 168, 7, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(192, 168, 7, 6)));
        assert_eq!(ipam.allocate("n", None).unwrap_err(), IpamError::NetworkFull("n".into()));
        assert!(ipam.release("n", got[1]));
        assert_eq!(ipam.allocate("n", None).unwrap(), got[1]);
        assert!(ipam.allocate("n", Some(Ipv4Addr::new(192, 168, 7, 1))).is_err(), "the gateway is reserved");
        assert!(ipam.allocate("x", None).is_err());
    }

    #[test]
    fn a_small_pool_runs_out_clearly() {
        let mut ipam = Ipam::new("10.9.0.0/23".parse().unwrap(), 24);
        ipam.create("a", None).unwrap();
        ipam.create("b", None).unwrap();
        assert!(ipam.create("c", None).unwrap_err().to_string().contains("exhausted"));
        let json = serde_json::to_string(&ipam).unwrap();
        assert_eq!(serde_json::from_str::<Ipam>(&json).unwrap(), ipam);
    }
}
