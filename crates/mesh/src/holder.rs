//! Who holds a port that could not be opened: the socket bound to it, from
//! `/proc/net/{tcp,tcp6,udp,udp6}` of the calling thread's network
//! namespace, and the process with that socket among its file descriptors.
//!
//! Best effort, only on a failed open: a process whose descriptors we may
//! not read (another user's, without root), or a socket of another
//! namespace, gives no holder.

use std::fs;
use std::path::Path;

use crate::{PortKey, Protocol};

/// A process holding a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `/proc/PID/comm`: the program's name, at most 15 bytes.
    pub command: String,
}

/// `nginx (pid 1234)`.
impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.command, self.pid)
    }
}

/// The state `/proc/net/tcp` gives a listening socket (`TCP_LISTEN`).
const TCP_LISTEN: &str = "0A";

/// The process holding `key` in this thread's network namespace, if found.
pub(crate) fn find(key: PortKey) -> Option<Holder> {
    let tables = match key.protocol {
        Protocol::Tcp => ["tcp", "tcp6"],
        Protocol::Udp => ["udp", "udp6"],
    };
    let mut inodes = Vec::new();
    for table in tables {
        // thread-self: the namespace this thread bound in, which is not
        // necessarily the process's (`/proc/net` is `/proc/self/net`).
        let text = fs::read_to_string(format!("/proc/thread-self/net/{table}"))
            .or_else(|_| fs::read_to_string(format!("/proc/net/{table}")));
        if let Ok(text) = text {
            inodes.extend(socket_inodes(&text, key.port));
        }
    }
    // Listening sockets first: they are what a bind conflicts with.
    inodes.sort_by_key(|&(listening, _)| !listening);
    let inodes: Vec<u64> = inodes.into_iter().map(|(_, inode)| inode).collect();
    process_holding(Path::new("/proc"), &inodes)
}

/// The sockets of a `/proc/net/{tcp,udp}{,6}` table whose local port is
/// `port`, as (listening, inode); sockets without an inode (`TIME_WAIT`)
/// are left out, and so is any line that does not parse.
fn socket_inodes(table: &str, port: u16) -> impl Iterator<Item = (bool, u64)> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
        let fields: Vec<&str> = line.split_whitespace().take(10).collect();
        let [_, local, _, state, _, _, _, _, _, inode] = fields[..] else { return None };
        let (_, local_port) = local.rsplit_once(':')?;
        if u16::from_str_radix(local_port, 16).ok()? != port {
            return None;
        }
        let inode: u64 = inode.parse().ok()?;
        (inode != 0).then_some((state == TCP_LISTEN, inode))
    })
}

/// The first process under `proc` with a descriptor on the first socket of
/// `inodes` that any process holds.
fn process_holding(proc: &Path, inodes: &[u64]) -> Option<Holder> {
    if inodes.is_empty() {
        return None;
    }
    let links: Vec<String> = inodes.iter().map(|inode| format!("socket:[{inode}]")).collect();
    let mut best: Option<(usize, u32)> = None;
    for entry in fs::read_dir(proc).ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let Some(rank) = links.iter().position(|link| target.as_os_str() == link.as_str()) else {
                continue;
            };
            if best.is_none_or(|(best_rank, _)| rank < best_rank) {
                best = Some((rank, pid));
            }
        }
        if matches!(best, Some((0, _))) {
            break;
        }
    }
    let (_, pid) = best?;
    let command = fs::read_to_string(proc.join(pid.to_string()).join("comm")).unwrap_or_default();
    Some(Holder { pid, command: command.trim_end().to_owned() })
}

#[cfg(test)]
mod tests {
    use super::socket_inodes;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 41240 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:D2F2 06 00000000:00000000 03:00000E3A 00000000     0        0 0 3 0000000000000000
   3: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
   4: garbage
";

    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  12: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 7777 2 0000000000000000 0
";

    #[test]
    fn finds_the_sockets_on_a_port_listening_ones_marked() {
        let found: Vec<_> = socket_inodes(TCP, 8080).collect();
        assert_eq!(found, [(true, 41234), (false, 41240)]);
        assert_eq!(socket_inodes(TCP, 22).collect::<Vec<_>>(), [(true, 999)]);
        assert_eq!(socket_inodes(TCP, 443).count(), 0);
    }

    #[test]
    fn reads_ipv6_tables() {
        assert_eq!(socket_inodes(UDP6, 53).collect::<Vec<_>>(), [(false, 7777)]);
    }

    #[test]
    fn odd_input_gives_nothing_and_does_not_panic() {
        for table in [
            "",
            "header only",
            "h\n\n  :  : :",
            "h\n 0: x:zz y 0A a b c d e 5",
            "h\n 0: :FFFFF 0 0A 1 2 3 4 5 6",
        ] {
            assert_eq!(socket_inodes(table, 80).count(), 0, "{table:?}");
        }
    }
}
