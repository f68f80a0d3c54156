//! What a daemon needs to keep hold of a task's processes across its own
//! restart (live restore): output FIFOs that outlive it, the identity of
//! a process (pid and start time, as pids are reused), and a pidfd to
//! wait for a process that is not its child.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::stat::Mode;

/// The pipe buffer of a task's output: what it may write while no daemon
/// reads, before its writes block (Linux's default `pipe-max-size`).
pub const OUTPUT_BUFFER: usize = 1 << 20;

/// Makes the FIFO `path` for one output stream of a task; returns its
/// read end (non-blocking, for the daemon) and a write end (for the
/// task's stdout or stderr). The buffer is raised to [`OUTPUT_BUFFER`]
/// where the system allows.
pub fn output_fifo(path: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    match nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let reader = open_output(path)?;
    // A reader exists, so this open does not block.
    let writer = std::fs::OpenOptions::new().write(true).open(path)?;
    let _ = nix::fcntl::fcntl(&reader, nix::fcntl::FcntlArg::F_SETPIPE_SZ(OUTPUT_BUFFER as i32));
    Ok((reader, writer.into()))
}

/// Opens the read end of a task's output FIFO again (a daemon adopting a
/// running task): what the task wrote meanwhile is still buffered there.
pub fn open_output(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    Ok(file.into())
}

/// When the process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/PID/stat`): with the pid, it names one process for good.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // from the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// A pidfd for the process `pid` if it is still the one that started at
/// `started` (see [`start_time`]); `None` if it is gone or the pid now
/// names another process.
pub fn pidfd_if_same(pid: i32, started: u64) -> Option<OwnedFd> {
    if start_time(pid) != Some(started) {
        return None;
    }
    let fd = crate::sys::pidfd_open(pid).ok()?;
    // Checked again once held: the pidfd names whatever process had the
    // pid when it was opened, so a match now proves it is the one.
    (start_time(pid) == Some(started)).then_some(fd)
}

/// Whether the process a pidfd names has exited.
pub fn exited(pidfd: &OwnedFd) -> bool {
    crate::sys::pidfd_exited(pidfd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = std::process::id() as i32;
        let started = start_time(me).expect("our own start time");
        let fd = pidfd_if_same(me, started).expect("our own pidfd");
        assert!(!exited(&fd), "we run");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_fd = crate::sys::pidfd_open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(exited(&child_fd));
        assert!(pidfd_if_same(me, started + 1).is_none(), "another process under a reused pid");
        assert!(start_time(i32::MAX).is_none());
    }

    #[test]
    fn output_written_while_no_daemon_reads_waits_in_the_fifo() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("shoal-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        let (reader, writer) = output_fifo(&path).unwrap();
        // The task's holder keeps a read end, so the daemon's can go.
        let held = open_output(&path).unwrap();
        drop(reader);
        let mut writer = std::fs::File::from(writer);
        writer.write_all(b"while away\n").unwrap();
        let mut again = std::fs::File::from(open_output(&path).unwrap());
        let mut buf = [0u8; 64];
        let n = again.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"while away\n");
        drop((held, writer));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
