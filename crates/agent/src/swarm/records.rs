//! The manager's records in its state store, read and written the same way
//! by every part of the manager: lookups by id, name or id prefix as docker
//! does them, the IPAM loaded or made from the swarm's pool, and the one
//! writer lock that serialises read-modify-write.

use std::sync::{Mutex, MutexGuard};

use shoal_control::ipam::Ipam;
use shoal_control::{ClusterState, NetworkRecord, NodeRecord, Store};

use crate::error::Error;

/// The manager's store and its writer lock.
#[derive(Debug)]
pub struct Records {
    /// The store.
    pub store: Store,
    /// Serialises read-modify-write of records (heartbeats, the down
    /// monitor, `node update/rm`, token rotation, the orchestrator), so
    /// none undoes another.
    writer: Mutex<()>,
}

impl Records {
    /// Over an open store.
    pub fn new(store: Store) -> Records {
        Records { store, writer: Mutex::new(()) }
    }

    /// Takes the writer lock.
    pub fn write(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cluster.
    pub fn cluster(&self) -> Result<ClusterState, Error> {
        self.store
            .cluster()?
            .ok_or_else(|| Error::Internal("the manager's state store holds no cluster".into()))
    }

    /// Every node, by hostname.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        let mut nodes = self.store.nodes()?;
        nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        Ok(nodes)
    }

    /// One node by id, hostname or id prefix.
    pub fn find_node(&self, name: &str) -> Result<NodeRecord, Error> {
        pick(self.nodes()?, name, "node", |n| (&n.id, &n.hostname))
    }

    /// Every network, by name.
    pub fn networks(&self) -> Result<Vec<NetworkRecord>, Error> {
        let mut all = self.store.networks()?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    /// One network by id, name or id prefix.
    pub fn find_network(&self, name: &str) -> Result<NetworkRecord, Error> {
        pick(self.networks()?, name, "network", |n| (&n.id, &n.name))
    }

    /// The IPAM, or a new one over the swarm's address pool.
    pub fn ipam(&self) -> Result<Ipam, Error> {
        match self.store.ipam()? {
            Some(ipam) => Ok(ipam),
            None => {
                let pool = self.cluster()?.default_addr_pool.parse().map_err(Error::internal)?;
                Ok(Ipam::new(pool, 24))
            }
        }
    }
}

/// Finds one of `items` as docker does: by exact id, else by name (which
/// must be unique), else by id prefix (which must be unique).
pub fn pick<T: Clone>(
    items: Vec<T>,
    wanted: &str,
    kind: &str,
    keys: impl Fn(&T) -> (&String, &String),
) -> Result<T, Error> {
    if let Some(item) = items.iter().find(|i| keys(i).0 == wanted) {
        return Ok(item.clone());
    }
    let by_name: Vec<&T> = items.iter().filter(|i| keys(i).1 == wanted).collect();
    let matches = if by_name.is_empty() {
        items.iter().filter(|i| keys(i).0.starts_with(wanted)).collect()
    } else {
        by_name
    };
    match matches[..] {
        [one] => Ok(one.clone()),
        [] => Err(Error::NotFound(format!("{kind} {wanted} not found"))),
        _ => Err(Error::Invalid(format!("{kind} {wanted} is ambiguous ({} matches)", matches.len()))),
    }
}

/// A Swarm-style node, cluster or object id: 25 base-36 characters.
pub fn new_id() -> Result<String, Error> {
    let mut n = u128::from_le_bytes(shoal_control::ca::random()?);
    Ok((0..25)
        .map(|_| {
            let d = (n % 36) as u32;
            n /= 36;
            char::from_digit(d, 36).expect("below 36")
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_go_by_id_then_name_then_prefix() {
        let items = vec![("abc1".to_owned(), "web".to_owned()), ("abd2".to_owned(), "db".to_owned())];
        fn keys(i: &(String, String)) -> (&String, &String) {
            (&i.0, &i.1)
        }
        assert_eq!(pick(items.clone(), "abd2", "service", keys).unwrap().1, "db");
        assert_eq!(pick(items.clone(), "web", "service", keys).unwrap().0, "abc1");
        assert_eq!(pick(items.clone(), "abc", "service", keys).unwrap().1, "web");
        let err = pick(items.clone(), "ab", "service", keys).unwrap_err().to_string();
        assert_eq!(err, "service ab is ambiguous (2 matches)");
        assert!(matches!(pick(items, "nope", "service", keys), Err(Error::NotFound(_))));
    }

    #[test]
    fn ids_look_like_swarm_ids() {
        let id = new_id().unwrap();
        assert_eq!(id.len(), 25);
        assert!(id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(id, new_id().unwrap());
    }
}
