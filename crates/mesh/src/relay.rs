//! Moving one TCP connection's bytes both ways until both sides have closed.
//!
//! Each direction reads until its source's end, then shuts down writing on
//! its destination, so a half-close reaches the other side and the reply
//! still comes back. The relay ends when both directions have, or at once
//! on the first error of either (both sockets are then closed).
//!
//! [`Relay::Splice`], the default, moves bytes with `splice(2)` from the
//! source socket into a pipe and from the pipe into the destination socket:
//! the kernel hands page references along and the bytes never enter user
//! space. [`Relay::Copy`] is tokio's `copy_bidirectional` with a 64 KiB
//! buffer per direction; the splice relay falls back to it when it cannot
//! have its pipes (out of file descriptors). On loopback the splice relay
//! moved 1.6 to 2x the bytes per second of the copy relay at a fraction of
//! its CPU (`examples/relay_throughput.rs`, numbers in ARCHITECTURE.md).

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::unistd::pipe2;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use crate::stats::{Counters, add};

/// How a TCP connection's bytes move between client and backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Relay {
    /// `splice(2)` through a pipe per direction; bytes stay in the kernel.
    #[default]
    Splice,
    /// Reads into and writes from a 64 KiB user-space buffer per direction
    /// (tokio's `copy_bidirectional`).
    Copy,
}

/// Buffer per direction of [`Relay::Copy`].
const COPY_BUFFER: usize = 64 * 1024;

/// Most bytes one `splice` moves from a socket into an empty pipe: Linux's
/// default pipe capacity (16 pages). A pipe shrunk by the per-user pipe
/// quota (`fs.pipe-user-pages-soft`, which root is exempt from) still works,
/// moving less per call.
const SPLICE_CHUNK: usize = 64 * 1024;

/// Relays until both sides have closed; `Err` if it ended on an error.
pub(crate) async fn relay(
    client: TcpStream,
    backend: TcpStream,
    mode: Relay,
    counters: &Counters,
) -> io::Result<()> {
    if mode == Relay::Splice {
        match (Pipe::new(), Pipe::new()) {
            (Ok(upstream), Ok(downstream)) => {
                tokio::try_join!(
                    pump(&client, &backend, &upstream, &counters.bytes_to_backend),
                    pump(&backend, &client, &downstream, &counters.bytes_to_client),
                )?;
                return Ok(());
            }
            (Err(error), _) | (_, Err(error)) => {
                debug!(%error, "no pipe for splice, copying instead");
            }
        }
    }
    copy(client, backend, counters).await
}

// === splice ===

/// One direction's pipe; both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }
}

/// Moves `from`'s bytes to `to` until `from` ends, then shuts down writing
/// on `to`.
///
/// The pipe is filled only when it is empty, so a `splice` into it that
/// would block can only mean that `from` has nothing to read: that is what
/// lets the readiness of `from` be cleared on `EAGAIN` without ever waiting
/// for data that is already there.
async fn pump(from: &TcpStream, to: &TcpStream, pipe: &Pipe, moved: &AtomicU64) -> io::Result<()> {
    loop {
        let mut in_pipe = fill(from, pipe).await?;
        if in_pipe == 0 {
            return SockRef::from(to).shutdown(std::net::Shutdown::Write);
        }
        while in_pipe > 0 {
            let sent = drain(pipe, to, in_pipe).await?;
            in_pipe -= sent;
            add(moved, sent);
        }
    }
}

/// Splices what `from` has (at most [`SPLICE_CHUNK`]) into the empty pipe;
/// 0 at the end of `from`.
async fn fill(from: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        from.readable().await?;
        let spliced = from.try_io(Interest::READABLE, || {
            splice(from, None, &pipe.write, None, SPLICE_CHUNK, flags).map_err(io::Error::from)
        });
        match spliced {
            Err(error) if retry(&error) => continue,
            result => return result,
        }
    }
}

/// Splices up to `len` bytes from the pipe into `to`; never 0.
async fn drain(pipe: &Pipe, to: &TcpStream, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
    loop {
        to.writable().await?;
        let spliced = to.try_io(Interest::WRITABLE, || {
            splice(&pipe.read, None, to, None, len, flags).map_err(io::Error::from)
        });
        match spliced {
            Err(error) if retry(&error) => continue,
            // The pipe holds `len` bytes, so 0 would mean the kernel broke
            // splice's contract; stop rather than spin.
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            result => return result,
        }
    }
}

/// Whether a splice should wait for readiness and try again (`try_io` has
/// cleared the readiness on `WouldBlock`).
fn retry(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted)
}

// === copy ===

async fn copy(mut client: TcpStream, mut backend: TcpStream, counters: &Counters) -> io::Result<()> {
    let mut client = Counted { stream: &mut client, written: &counters.bytes_to_client };
    let mut backend = Counted { stream: &mut backend, written: &counters.bytes_to_backend };
    tokio::io::copy_bidirectional_with_sizes(&mut client, &mut backend, COPY_BUFFER, COPY_BUFFER).await?;
    Ok(())
}

/// A stream that counts the bytes written to it as they go, so the
/// counters move during a long connection, not only at its end.
struct Counted<'a> {
    stream: &'a mut TcpStream,
    written: &'a AtomicU64,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            add(self.written, n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}
