//! Named network namespaces, compatible with `ip netns`: each is a bind mount
//! of a namespace file under `/run/netns`, so `ip netns exec NAME` works on
//! the ones Shoal creates and Shoal can open the ones `ip` creates.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named namespaces are mounted, as iproute2 does.
pub const NETNS_DIR: &str = "/run/netns";

/// Why a namespace operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The name cannot be a file name under `/run/netns`.
    #[error("invalid network namespace name {0:?}: use 1-200 characters from A-Z a-z 0-9 _ . -")]
    InvalidName(String),
    /// A namespace of this name exists already.
    #[error("network namespace {0} already exists")]
    Exists(String),
    /// No namespace of this name exists.
    #[error("network namespace {0} does not exist")]
    NotFound(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

fn nix_err(what: impl Into<String>) -> impl FnOnce(Errno) -> NetnsError {
    let what = what.into();
    move |errno| NetnsError::Io { what, source: errno.into() }
}

fn check_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { Err(NetnsError::InvalidName(name.to_owned())) }
}

/// A named network namespace, held open.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    file: File,
}

impl NetNs {
    /// Creates a new, empty namespace named `name` (only `lo`, down).
    pub fn create(name: &str) -> Result<NetNs, NetnsError> {
        check_name(name)?;
        ensure_netns_dir()?;
        let path = Path::new(NETNS_DIR).join(name);
        match OpenOptions::new().write(true).create_new(true).mode(0o444).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::Exists(name.into()));
            }
            Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
        }
        let target = path.clone();
        let made = std::thread::spawn(move || -> Result<(), NetnsError> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(nix_err("unshare a network namespace"))?;
            mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(nix_err(format!("bind-mount namespace onto {}", target.display())))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetnsError::Io { what: "namespace thread".into(), source: io::Error::other("panicked") })
        });
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        NetNs::open(name)
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<NetNs, NetnsError> {
        check_name(name)?;
        let path = Path::new(NETNS_DIR).join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(NetnsError::NotFound(name.into())),
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        Ok(NetNs { name: name.to_owned(), path, file })
    }

    /// Whether a namespace of this name exists.
    pub fn exists(name: &str) -> bool {
        check_name(name).is_ok() && Path::new(NETNS_DIR).join(name).exists()
    }

    /// The names of all named namespaces.
    pub fn list() -> Vec<String> {
        let Ok(dir) = fs::read_dir(NETNS_DIR) else { return Vec::new() };
        dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file under `/run/netns`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    /// Sockets and devices `f` creates belong to the namespace and keep
    /// working from any thread afterwards.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetnsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(&self.file, CloneFlags::CLONE_NEWNET)
                        .map_err(nix_err(format!("enter network namespace {}", self.name)))?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a thread named `thread` that enters this namespace and runs
    /// `f` there, for work that lives in the namespace (a socket factory).
    pub fn spawn<F>(&self, thread: &str, f: F) -> Result<std::thread::JoinHandle<()>, NetnsError>
    where
        F: FnOnce() + Send + 'static,
    {
        let file = self.file.try_clone().map_err(io_err(format!("open network namespace {}", self.name)))?;
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(thread.to_owned())
            .spawn(move || match setns(&file, CloneFlags::CLONE_NEWNET) {
                Ok(()) => {
                    drop(file);
                    f();
                }
                Err(e) => tracing::warn!(netns = %name, error = %e, "cannot enter the network namespace"),
            })
            .map_err(io_err(format!("start a thread in network namespace {}", self.name)))
    }

    /// Unmounts and removes the namespace's name. The namespace itself goes
    /// away once no process or open descriptor holds it.
    pub fn delete(self) -> Result<(), NetnsError> {
        let NetNs { name, path, file } = self;
        drop(file);
        delete_path(&name, &path)
    }

    /// Removes the named namespace `name` without opening it first.
    pub fn delete_by_name(name: &str) -> Result<(), NetnsError> {
        check_name(name)?;
        delete_path(name, &Path::new(NETNS_DIR).join(name))
    }
}

fn delete_path(name: &str, path: &Path) -> Result<(), NetnsError> {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Err(NetnsError::NotFound(name.into())),
        Err(e) => return Err(nix_err(format!("unmount {}", path.display()))(e)),
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
    }
}

/// Makes `/run/netns` a shared mount point, as `ip netns add` does, so that
/// namespace mounts made here are seen in every mount namespace (those that
/// `ip netns exec` creates included).
fn ensure_netns_dir() -> Result<(), NetnsError> {
    fs::create_dir_all(NETNS_DIR).map_err(io_err(format!("create {NETNS_DIR}")))?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    match mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(Some(NETNS_DIR), NETNS_DIR, Some("none"), MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
                .map_err(nix_err(format!("bind-mount {NETNS_DIR}")))?;
            mount(None::<&str>, NETNS_DIR, Some("none"), shared, None::<&str>)
                .map_err(nix_err(format!("make {NETNS_DIR} shared")))
        }
        Err(e) => Err(nix_err(format!("make {NETNS_DIR} shared"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "..", "has space", &"x".repeat(201)] {
            assert!(matches!(check_name(bad), Err(NetnsError::InvalidName(_))), "{bad:?}");
        }
        check_name("shoal-123-0-h1").unwrap();
    }
}
