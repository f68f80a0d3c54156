//! This node's named volumes, in docker's layout: the volume `NAME` is the
//! directory `<data dir>/volumes/NAME/_data`, with `meta.json` beside it
//! (when it was made, its labels).
//!
//! A volume is made by `volume create` or by the first task that mounts it,
//! and kept until `volume rm`: task restarts, task and service removals
//! and daemon restarts all keep it. Anonymous volumes (a volume mount
//! without a source) are named after their task's id and kept too: docker
//! removes anonymous volumes only with `--rm` containers, which services do
//! not have.
//!
//! Invariant: a volume that a task running on this node mounts is never
//! removed. Making a volume and checking-then-removing one hold the same
//! lock, and the task runner counts a task as running before it makes its
//! volumes, so a removal either sees the task or comes wholly before it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use shoal_orch::{MountKind, Task};

use crate::clock::now_ms;
use crate::error::{Error, Result};

/// One volume of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its name.
    pub name: String,
    /// The directory tasks see: `<data dir>/volumes/NAME/_data`.
    pub mountpoint: PathBuf,
    /// When it was made, in ms since the epoch.
    pub created_ms: u64,
    /// Its labels (`volume create --label`).
    pub labels: BTreeMap<String, String>,
}

/// What `meta.json` keeps of a volume.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    created_ms: u64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// The volumes under one data directory.
#[derive(Debug)]
pub struct Volumes {
    /// `<data dir>/volumes`.
    root: PathBuf,
    /// Held while making or removing a volume.
    lock: Mutex<()>,
}

/// Checks a volume name as docker's local driver does (one rule for the
/// CLI, compose files and the node).
pub use shoal_compose::mounts::check_volume_name as check_name;

/// The volume a mount of `task` uses: its source, or the task's id for an
/// anonymous volume. `None` for binds and tmpfs mounts.
pub fn volume_name(task: &Task, mount: &shoal_orch::Mount) -> Option<String> {
    match mount.kind {
        MountKind::Volume if mount.source.is_empty() => Some(task.id.clone()),
        MountKind::Volume => Some(mount.source.clone()),
        MountKind::Bind | MountKind::Tmpfs => None,
    }
}

/// Every volume `task` mounts.
pub fn task_volumes(task: &Task) -> Vec<String> {
    task.spec.mounts.iter().filter_map(|m| volume_name(task, m)).collect()
}

fn not_found(name: &str) -> Error {
    Error::NotFound(format!("get {name}: no such volume"))
}

impl Volumes {
    /// The volumes of the agent whose data directory is `data_dir`.
    pub fn new(data_dir: &Path) -> Volumes {
        Volumes { root: data_dir.join("volumes"), lock: Mutex::new(()) }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", self.root.display()))(e)),
        };
        let mut volumes: Vec<Volume> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|name| check_name(name).is_ok())
            .filter_map(|name| self.load(&name))
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    /// The volume `name`.
    pub fn get(&self, name: &str) -> Result<Volume> {
        check_name(name).map_err(|_| not_found(name))?;
        self.load(name).ok_or_else(|| not_found(name))
    }

    /// Reads a volume; `None` if it has no `_data` directory. A missing or
    /// unreadable `meta.json` reads as no labels, made when `_data` was.
    fn load(&self, name: &str) -> Option<Volume> {
        let dir = self.dir(name);
        let mountpoint = dir.join("_data");
        let data = std::fs::metadata(&mountpoint).ok().filter(|m| m.is_dir())?;
        let meta = std::fs::read(dir.join("meta.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Meta>(&b).ok())
            .unwrap_or_else(|| Meta { created_ms: modified_ms(&data), labels: BTreeMap::new() });
        Some(Volume { name: name.to_owned(), mountpoint, created_ms: meta.created_ms, labels: meta.labels })
    }

    /// Makes the volume `name` with `labels`; one that exists already is
    /// returned as it is, as docker's `volume create` does.
    pub fn create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Volume> {
        check_name(name).map_err(|e| Error::Invalid(format!("create {name}: {e}")))?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(volume) = self.load(name) {
            return Ok(volume);
        }
        self.make(name, labels)?;
        self.load(name).ok_or_else(|| not_found(name))
    }

    /// The directory of the volume `name`, made (without labels) if it
    /// does not exist yet.
    pub fn ensure(&self, name: &str) -> Result<PathBuf> {
        check_name(name).map_err(Error::Invalid)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        match self.load(name) {
            Some(volume) => Ok(volume.mountpoint),
            None => self.make(name, BTreeMap::new()),
        }
    }

    /// Makes `_data` (mode 0755) and `meta.json`; the caller holds the lock.
    fn make(&self, name: &str, labels: BTreeMap<String, String>) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.dir(name);
        let data = dir.join("_data");
        std::fs::create_dir_all(&data).map_err(Error::io(format!("create volume {name}")))?;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("create volume {name}")))?;
        let meta = Meta { created_ms: now_ms(), labels };
        std::fs::write(dir.join("meta.json"), serde_json::to_vec(&meta).expect("serialisable"))
            .map_err(Error::io(format!("create volume {name}")))?;
        tracing::info!(volume = %name, "created a volume");
        Ok(data)
    }

    /// Removes the volume `name` and everything in it, unless `users`
    /// (the running tasks that mount a volume, by volume name) names a task
    /// for it: that is a conflict, as in docker, whatever `force` says.
    pub fn remove(&self, name: &str, users: impl FnOnce() -> BTreeMap<String, Vec<String>>) -> Result<()> {
        check_name(name).map_err(|_| not_found(name))?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.load(name).is_none() {
            return Err(not_found(name));
        }
        if let Some(tasks) = users().get(name).filter(|t| !t.is_empty()) {
            return Err(Error::Conflict(format!("remove {name}: volume is in use - [{}]", tasks.join(", "))));
        }
        std::fs::remove_dir_all(self.dir(name)).map_err(Error::io(format!("remove {name}")))?;
        tracing::info!(volume = %name, "removed a volume");
        Ok(())
    }
}

fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory of its own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("shoal-{what}-{}-{}", std::process::id(), now_ms()));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn names_follow_dockers_rule() {
        for good in ["data", "a", "redis_data-1.0", "0abc"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", "_x", ".x", "-x", "a b", "a/b", "../etc", "/abs"] {
            let err = check_name(bad).unwrap_err();
            assert!(err.contains("includes invalid characters for a local volume name"), "{bad}: {err}");
        }
        assert!(check_name("./x").unwrap_err().contains("use absolute path"));
    }

    #[test]
    fn volumes_are_made_once_listed_and_kept_until_removed() {
        let tmp = TempDir::new("volumes");
        let volumes = Volumes::new(&tmp.0);
        assert!(volumes.list().unwrap().is_empty(), "no volumes directory yet");
        let labels = BTreeMap::from([("app".to_owned(), "db".to_owned())]);
        let made = volumes.create("data", labels.clone()).unwrap();
        assert_eq!(made.mountpoint, tmp.0.join("volumes/data/_data"));
        assert_eq!(made.labels, labels);
        std::fs::write(made.mountpoint.join("dump.rdb"), b"kept").unwrap();
        // A second create, or a task's first use, keeps what is there.
        assert_eq!(volumes.create("data", BTreeMap::new()).unwrap(), made);
        assert_eq!(volumes.ensure("data").unwrap(), made.mountpoint);
        assert_eq!(std::fs::read(made.mountpoint.join("dump.rdb")).unwrap(), b"kept");
        let fresh = volumes.ensure("cache").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o755);
        let names: Vec<String> = volumes.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["cache", "data"]);
        assert_eq!(volumes.get("data").unwrap(), made);
        volumes.remove("data", BTreeMap::new).unwrap();
        assert!(!tmp.0.join("volumes/data").exists());
        assert_eq!(volumes.get("data").unwrap_err().to_string(), "get data: no such volume");
    }

    #[test]
    fn volumes_in_use_are_not_removed_and_bad_names_are_refused() {
        let tmp = TempDir::new("volumes-use");
        let volumes = Volumes::new(&tmp.0);
        volumes.ensure("data").unwrap();
        let users = || BTreeMap::from([("data".to_owned(), vec!["t1".to_owned(), "t2".to_owned()])]);
        let err = volumes.remove("data", users).unwrap_err();
        assert!(matches!(err, Error::Conflict(_)));
        assert_eq!(err.to_string(), "remove data: volume is in use - [t1, t2]");
        assert!(volumes.get("data").is_ok());
        assert!(matches!(volumes.remove("nope", BTreeMap::new), Err(Error::NotFound(_))));
        assert!(matches!(volumes.remove("../volumes", BTreeMap::new), Err(Error::NotFound(_))));
        let err = volumes.create("a b", BTreeMap::new()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        assert!(err.to_string().starts_with("create a b: \"a b\" includes invalid characters"), "{err}");
        assert!(volumes.ensure("../escape").is_err());
        assert!(!tmp.0.join("escape").exists());
    }
}
