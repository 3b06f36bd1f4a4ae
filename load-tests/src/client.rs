//! HTTP/1.1 keep-alive connections to the target, pooled and capped.
//!
//! An open-loop generator must never wait for a free connection: waiting would
//! quietly turn it back into a closed loop. So a request takes an idle
//! connection if there is one, else opens a new one, and if `max_connections`
//! are already open (all busy) it is not sent at all and counts as
//! `client_saturated`. Connections are plain TCP with `TCP_NODELAY`, driven by
//! hyper's low-level client; there is no TLS.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{header, Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::scenario::Prepared;
use crate::stats::{ErrorKind, Outcome};
use crate::target::Target;

/// Sends one request and reports how it ended. The runner applies the timeout
/// by dropping the future, so implementations must be cancel-safe.
pub trait Transport: Send + Sync + 'static {
    fn send(&self, req: Prepared) -> impl std::future::Future<Output = Outcome> + Send;
}

pub struct HttpClient {
    target: Target,
    max_connections: usize,
    shared: Arc<Shared>,
}

/// State shared with every [`Conn`], so a connection dropped anywhere
/// (including by a timeout) gives its slot back.
#[derive(Default)]
struct Shared {
    /// Connections that finished their last exchange and may be reused.
    idle: Mutex<Vec<Conn>>,
    /// Open or opening connections; never above `max_connections`.
    open: AtomicUsize,
    /// Connections opened over the run (reported: a number much larger than
    /// the peak concurrency means the server closes connections).
    opened: AtomicU64,
}

/// One counted slot of the cap; released on drop.
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Conn {
    sender: SendRequest<Full<Bytes>>,
    _slot: Slot,
}

impl HttpClient {
    pub fn new(target: Target, max_connections: usize) -> HttpClient {
        HttpClient {
            target,
            max_connections: max_connections.max(1),
            shared: Arc::default(),
        }
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// An idle live connection, or a reserved slot to open a new one, or
    /// `client_saturated`.
    fn checkout(&self) -> Result<Result<Conn, Slot>, ErrorKind> {
        {
            let mut idle = self.shared.idle.lock().expect("pool lock");
            while let Some(conn) = idle.pop() {
                if !conn.sender.is_closed() {
                    return Ok(Ok(conn));
                }
            }
        }
        let reserved = self
            .shared
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_connections).then_some(n + 1)
            });
        match reserved {
            Ok(_) => Ok(Err(Slot(self.shared.clone()))),
            Err(_) => Err(ErrorKind::ClientSaturated),
        }
    }

    async fn connect(&self, slot: Slot) -> Result<Conn, ErrorKind> {
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|_| ErrorKind::Connect)?;
        stream.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ErrorKind::Connect)?;
        // Drives the socket; ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            sender,
            _slot: slot,
        })
    }

    /// A connection ready to send. An idle one the server has meanwhile
    /// closed is discarded and the next one tried.
    async fn acquire(&self) -> Result<Conn, ErrorKind> {
        loop {
            match self.checkout()? {
                Ok(mut conn) => {
                    if conn.sender.ready().await.is_ok() {
                        return Ok(conn);
                    }
                }
                Err(slot) => {
                    let mut conn = self.connect(slot).await?;
                    conn.sender.ready().await.map_err(|_| ErrorKind::Connect)?;
                    return Ok(conn);
                }
            }
        }
    }

    async fn exchange(&self, req: Prepared) -> Outcome {
        let mut conn = match self.acquire().await {
            Ok(conn) => conn,
            Err(kind) => return Outcome::Error(kind),
        };
        let request = Request::builder()
            .method(Method::POST)
            .uri(&*req.path)
            .header(header::HOST, &self.target.host_header)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("cascade-load/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(req.body))
            .expect("path and headers are valid");
        let response = match conn.sender.send_request(request).await {
            Ok(r) => r,
            Err(_) => return Outcome::Error(ErrorKind::Io),
        };
        let status = response.status().as_u16();
        // The response counts as complete once its whole body has arrived;
        // only then can the connection carry another request.
        if response.into_body().collect().await.is_err() {
            return Outcome::Error(ErrorKind::Io);
        }
        if !conn.sender.is_closed() {
            self.shared.idle.lock().expect("pool lock").push(conn);
        }
        Outcome::Status(status)
    }
}

impl Transport for HttpClient {
    fn send(&self, req: Prepared) -> impl std::future::Future<Output = Outcome> + Send {
        self.exchange(req)
    }
}
