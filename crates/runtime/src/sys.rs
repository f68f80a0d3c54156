//! The few system calls that no safe wrapper covers.

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Gives the heap's free memory back to the kernel (glibc's `malloc_trim`):
/// after a burst of work, the allocator's per-thread arenas keep what was
/// freed. Returns whether any memory was given back.
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim takes no pointer and locks the arenas itself.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Sets `IFF_UP` on the interface `name` in the calling thread's network
/// namespace.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name must be 1-15 bytes"));
    }
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket and `req` a valid ifreq naming the
    // interface; SIOCGIFFLAGS only writes `ifr_ifru.ifru_flags`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS above initialised the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above; SIOCSIFFLAGS reads the name and flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd of the process `pid` (`pidfd_open`): it turns readable when the
/// process exits, whoever its parent is.
pub fn pidfd_open(pid: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process of `pidfd` has exited (its pidfd polls readable).
pub fn pidfd_exited(pidfd: &std::os::fd::OwnedFd) -> bool {
    let mut poll = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd, for an open descriptor, and a zero timeout.
    let n = unsafe { libc::poll(&mut poll, 1, 0) };
    n > 0 && poll.revents & libc::POLLIN != 0
}
