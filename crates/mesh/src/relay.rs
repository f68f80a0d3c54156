//! Moving one TCP connection's bytes both ways until both sides have closed.
//!
//! Each direction reads until its source's end, then shuts down writing on
//! its destination, so a half-close reaches the other side and the reply
//! still comes back. The relay ends when both directions have, or at once
//! on the first error of either (both sockets are then closed).
//!
//! [`Relay::Splice`], the default, starts each direction by copying through
//! a small buffer ([`SMALL`]): requests and replies of a few KiB cost one
//! read and one write, and a short read tells tokio the socket is empty, so
//! no call is spent learning it. The first read that fills the buffer shows
//! a bulk transfer: that direction moves on to `splice(2)`, from the source
//! socket into a pipe and from the pipe into the destination socket, so the
//! kernel hands page references along and the bytes never enter user space
//! (as HAProxy's `splice-auto`). [`Relay::Copy`] is tokio's
//! `copy_bidirectional` with a 64 KiB buffer per direction, for
//! comparison; a direction that cannot have a pipe (out of file
//! descriptors) goes on copying. `examples/relay_throughput.rs` measures
//! them on loopback.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::unistd::pipe2;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
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

/// Buffer per direction of [`Relay::Splice`] before it splices: a read
/// that fills it moves the direction on to splicing.
const SMALL: usize = 4 * 1024;

/// Most bytes one `splice` moves from a socket into an empty pipe: Linux's
/// default pipe capacity (16 pages). A pipe shrunk by the per-user pipe
/// quota (`fs.pipe-user-pages-soft`, which root is exempt from) still works,
/// moving less per call.
const SPLICE_CHUNK: usize = 64 * 1024;

/// Relays until both sides have closed; `Err` if it ended on an error.
pub(crate) async fn relay(
    mut client: TcpStream,
    mut backend: TcpStream,
    mode: Relay,
    counters: &Counters,
) -> io::Result<()> {
    if mode == Relay::Copy {
        return copy(client, backend, counters).await;
    }
    let (mut client_read, mut client_write) = client.split();
    let (mut backend_read, mut backend_write) = backend.split();
    tokio::try_join!(
        pump(&mut client_read, &mut backend_write, &counters.bytes_to_backend),
        pump(&mut backend_read, &mut client_write, &counters.bytes_to_client),
    )?;
    Ok(())
}

/// Moves `from`'s bytes to `to` until `from` ends, then shuts down writing
/// on `to`: copying while reads are short, splicing once one fills the
/// buffer.
async fn pump(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>, moved: &AtomicU64) -> io::Result<()> {
    let mut buffer = [0; SMALL];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buffer[..n]).await?;
        add(moved, n);
        if n == SMALL {
            match Pipe::take() {
                Ok(pipe) => {
                    splice_pump(from.as_ref(), to.as_ref(), &pipe, moved).await?;
                    // Empty after a direction that ended well.
                    pipe.give_back();
                    return Ok(());
                }
                Err(error) => debug!(%error, "no pipe for splice, copying on"),
            }
        }
    }
}

// === splice ===

// Empty pipes of relays that ended, for the next ones to use (making a
// pipe and closing it again costs four system calls per direction): at
// most `SPARE_PIPES`, per thread.
thread_local! {
    static SPARE: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// Empty pipes kept per thread.
const SPARE_PIPES: usize = 256;

/// One direction's pipe; both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    /// A spare empty pipe, or a new one.
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = SPARE.with_borrow_mut(Vec::pop) {
            return Ok(pipe);
        }
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Pipe { read, write })
    }

    /// Keeps an empty pipe for the next relay on this thread.
    fn give_back(self) {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_PIPES {
                spare.push(self);
            }
        });
    }
}

/// Splices `from`'s bytes to `to` until `from` ends, then shuts down
/// writing on `to`.
///
/// The pipe is filled only when it is empty, so a `splice` into it that
/// would block can only mean that `from` has nothing to read.
async fn splice_pump(from: &TcpStream, to: &TcpStream, pipe: &Pipe, moved: &AtomicU64) -> io::Result<()> {
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
