//! One connection's clock: how long it may sit idle between requests, and
//! how long a request's headers may take once its first byte arrived.
//!
//! hyper has a single `header_read_timeout`, started when it begins to wait
//! for the next request, so it is also the keep-alive idle timeout: a 5 s
//! header bound closed pooled connections that a load balancer (idle timeout
//! 60 s) still meant to reuse, and it answered with 502s. Here the two are
//! separate: [`TimedIo`] wraps the socket and, while hyper waits to read,
//! fails the read once the phase's deadline passes; the service marks
//! [`Clock::busy`] / [`Clock::idle`] around each request, and the first byte
//! that arrives while idle starts the header deadline. Bodies have their own
//! bounds (`http::body`), so no deadline runs while a request is busy.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for a request since this instant (a new connection, or the
    /// last response sent).
    Idle(Instant),
    /// A request's first bytes arrived at this instant; its headers are due.
    Head(Instant),
    /// A request is being read, computed or answered.
    Busy,
}

/// Where a connection is in its request cycle, shared by the socket wrapper
/// and the service. One per connection: the lock is never contended.
#[derive(Debug)]
pub struct Clock {
    phase: Mutex<Phase>,
    idle_timeout: Duration,
    header_timeout: Duration,
}

impl Clock {
    pub fn new(idle_timeout: Duration, header_timeout: Duration) -> Clock {
        Clock {
            phase: Mutex::new(Phase::Idle(Instant::now())),
            idle_timeout,
            header_timeout,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Phase) -> T) -> T {
        f(&mut self.phase.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A request's headers were parsed: no connection deadline until it is answered.
    pub fn busy(&self) {
        self.with(|p| *p = Phase::Busy);
    }

    /// The answer is on its way: the connection is idle from now.
    pub fn idle(&self) {
        self.with(|p| *p = Phase::Idle(Instant::now()));
    }

    /// Bytes arrived: an idle connection starts a request's header clock.
    fn bytes_arrived(&self) {
        self.with(|p| {
            if matches!(p, Phase::Idle(_)) {
                *p = Phase::Head(Instant::now());
            }
        });
    }

    /// When a read that is still waiting must give up, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        self.with(|p| match *p {
            Phase::Idle(since) => Some((since + self.idle_timeout, "idle")),
            Phase::Head(since) => Some((since + self.header_timeout, "header")),
            Phase::Busy => None,
        })
    }
}

/// A TCP stream whose reads fail with `TimedOut` when the connection's
/// [`Clock`] says the peer has taken too long; writes pass through.
pub struct TimedIo {
    inner: TcpStream,
    clock: std::sync::Arc<Clock>,
    timer: Pin<Box<Sleep>>,
}

impl TimedIo {
    pub fn new(inner: TcpStream, clock: std::sync::Arc<Clock>) -> TimedIo {
        TimedIo {
            inner,
            clock,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, why)) = self.clock.deadline() else {
                    return Poll::Pending;
                };
                if Instant::now() >= deadline {
                    return Poll::Ready(Err(timed_out(why)));
                }
                // An armed timer due sooner is kept: when it fires the
                // deadline is checked again and the timer moved to it. So a
                // keep-alive connection re-arms about once per idle timeout,
                // not once per request (each answer moves the idle deadline).
                if self.timer.deadline() > deadline || self.timer.is_elapsed() {
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    // Woken by the timer: the phase may have moved on since
                    // it was set, so only a deadline still in force counts.
                    Poll::Ready(()) => match self.clock.deadline() {
                        Some((d, why)) if Instant::now() >= d => Poll::Ready(Err(timed_out(why))),
                        _ => {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    },
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

fn timed_out(why: &'static str) -> io::Error {
    let what = match why {
        "idle" => "keep-alive connection idle for longer than server.idle_timeout_ms",
        _ => "request headers took longer than server.header_timeout_ms",
    };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(clock: Arc<Clock>) -> (TimedIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (TimedIo::new(server, clock), client)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_header_deadlines_are_separate() {
        let clock = Arc::new(Clock::new(Duration::from_secs(75), Duration::from_secs(5)));
        let (mut io, mut client) = pair(clock.clone()).await;
        let mut buf = [0u8; 16];
        // Idle for a minute: still open (the header bound is not the idle bound).
        let read = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
        assert!(read.is_err(), "an idle read outlived the 5 s header bound");
        // A request starts: its headers now have 5 s.
        client.write_all(b"GET").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 3);
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("header_timeout_ms"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        let clock = Arc::new(Clock::new(Duration::from_secs(75), Duration::from_secs(5)));
        let (mut io, _client) = pair(clock.clone()).await;
        clock.busy();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(300), io.read(&mut buf)).await;
        assert!(read.is_err(), "no deadline while a request is busy");
        clock.idle();
        let started = Instant::now();
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("idle_timeout_ms"), "{e}");
        assert_eq!(started.elapsed().as_secs(), 75);
    }
}
