//! The broker's TCP listener: bound with an explicit accept backlog, and
//! accepting without pause, so that no client waits unanswered in the
//! kernel's queue, however many connections are open.
//!
//! The [`Gate`] decides what each accepted connection gets: up to
//! `max_connections` are served, each holding a permit for its life; past
//! that, up to `REFUSING_CONNECTIONS_MAX` are told why they are refused
//! (`refusal`); past both, a connection is closed at once. `TCP_NODELAY` is
//! set on every connection: acknowledgments are small and latency-bound.
//!
//! No TCP keepalive: HTTP/2 pings find dead peers of served connections,
//! and every other connection is closed by a deadline of its own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::refusal::REFUSING_CONNECTIONS_MAX;

/// Pause after a failed accept (out of file descriptors, say) so that the
/// listener does not spin while the cause lasts.
const ACCEPT_RETRY_MS: u64 = 100;
/// Least time between two warnings that the connection limit turned
/// clients away (each says how many).
const LIMIT_WARNING_INTERVAL_MS: u64 = 10_000;

/// Listens on `addr` with a queue of `backlog` connections not yet accepted.
/// Must run inside the async runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // As std and tokio do on Unix: a restarted broker binds the address
    // that its predecessor's closed connections still hold in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// What an accepted connection gets.
#[derive(Debug)]
pub(super) enum Admission {
    /// Served, holding its slot under `max_connections` for its life.
    Serve(OwnedSemaphorePermit),
    /// Told that the broker is at its connection limit, then closed.
    Refuse(OwnedSemaphorePermit),
}

/// The connection limit, and the bound on connections being refused.
#[derive(Debug)]
pub(super) struct Gate {
    served: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    max_connections: usize,
    /// Refusals since the last warning, and when that was: a broker at its
    /// limit refuses clients all the time, and says so now and then.
    refusals: Mutex<Refusals>,
}

#[derive(Debug, Default)]
struct Refusals {
    since_warning: u64,
    warned: Option<Instant>,
}

impl Gate {
    pub(super) fn new(max_connections: usize) -> Gate {
        Gate {
            served: Arc::new(Semaphore::new(max_connections)),
            refusing: Arc::new(Semaphore::new(REFUSING_CONNECTIONS_MAX)),
            max_connections,
            refusals: Mutex::new(Refusals::default()),
        }
    }

    /// A slot for a new connection: served, refused, or `None` (close it now).
    fn admit(&self) -> Option<Admission> {
        if let Ok(permit) = self.served.clone().try_acquire_owned() {
            return Some(Admission::Serve(permit));
        }
        self.note_refusal();
        let refusal = self.refusing.clone().try_acquire_owned().ok()?;
        Some(Admission::Refuse(refusal))
    }

    fn note_refusal(&self) {
        // Only the accept loop takes the lock; a poisoned one still counts.
        let mut refusals = self.refusals.lock().unwrap_or_else(PoisonError::into_inner);
        refusals.since_warning += 1;
        let interval = Duration::from_millis(LIMIT_WARNING_INTERVAL_MS);
        if refusals.warned.is_some_and(|at| at.elapsed() < interval) {
            return;
        }
        tracing::warn!(
            max_connections = self.max_connections,
            refused = refusals.since_warning,
            "connection limit reached; refusing new connections until some close"
        );
        *refusals = Refusals {
            since_warning: 0,
            warned: Some(Instant::now()),
        };
    }

    /// Completes once every served connection has closed.
    pub(super) async fn drained(&self) {
        // `max_connections` fits: validated against MAX_CONNECTIONS_MAX.
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        // An error means the semaphore was closed, which nothing does.
        let _ = self.served.acquire_many(all).await;
    }
}

/// Accepts connections until `stop` completes, handing each to `handle`
/// with its admission (or closing it, past both bounds), then drops the
/// listener: from then on the kernel refuses new clients.
pub(super) async fn accept(
    listener: TcpListener,
    gate: &Gate,
    stop: impl Future<Output = ()>,
    mut handle: impl FnMut(TcpStream, Admission),
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed; retrying");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(error = %e, "setting TCP_NODELAY");
        }
        match gate.admit() {
            Some(admission) => handle(stream, admission),
            None => tracing::debug!("refusing a connection by closing it: too many being refused"),
        }
    }
}
