//! Peers that hold a connection to the broker the way a careless, hostile or
//! vanished client does: a TCP socket that never speaks (or sends only the
//! HTTP/2 preface), and an HTTP/2 connection driven call by call, whose
//! writes can be dropped as if its host had gone. Each tells when the broker
//! closed it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// What an HTTP/2 client sends first: the connection preface and an empty
/// SETTINGS frame (RFC 9113, 3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
/// An empty `grpc.health.v1.HealthCheckRequest` as a gRPC message: not
/// compressed, length 0 (the whole server, service "").
const EMPTY_GRPC_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];
/// An HTTP/2 frame header: length (3 bytes), type, flags, stream id (4).
const FRAME_HEADER_BYTES: usize = 9;
const FRAME_GOAWAY: u8 = 0x7;

/// A TCP connection that sends nothing, or only the HTTP/2 preface.
#[derive(Debug)]
pub struct SilentSocket {
    stream: TcpStream,
    opened: Instant,
}

impl SilentSocket {
    /// Connects and says nothing.
    pub async fn open(addr: SocketAddr) -> SilentSocket {
        // Taken before the connect: the broker accepts (and starts its
        // deadline) after it began, however late this task runs after it.
        let opened = Instant::now();
        let stream = TcpStream::connect(addr).await.expect("connecting");
        SilentSocket { stream, opened }
    }

    /// Connects, sends the HTTP/2 preface, and says nothing more.
    pub async fn open_with_preface(addr: SocketAddr) -> SilentSocket {
        let mut socket = SilentSocket::open(addr).await;
        socket
            .stream
            .write_all(HTTP2_PREFACE)
            .await
            .expect("sending the preface");
        socket
    }

    /// When the connection was made.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Reads what the broker sends until it closes the connection (an end
    /// of file or a reset) and returns how long after `open` that was.
    /// Panics after `timeout`: the broker held the connection.
    pub async fn closed_after(mut self, timeout: Duration) -> Duration {
        let mut buffer = [0u8; 4096];
        let closed = tokio::time::timeout(timeout, async {
            loop {
                match self.stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the broker held a silent connection for {timeout:?}"
        );
        self.opened.elapsed()
    }
}

/// An HTTP/2 connection to the broker, driven by hand: one call at a time,
/// or none.
#[derive(Debug)]
pub struct Http2Peer {
    calls: h2::client::SendRequest<Bytes>,
    authority: String,
    frozen: Arc<AtomicBool>,
    goaway: Arc<AtomicBool>,
    closed: oneshot::Receiver<Closed>,
}

/// How and when the broker ended an [`Http2Peer`]'s connection.
#[derive(Debug)]
pub struct Closed {
    pub at: Instant,
    /// Whether the broker sent GOAWAY before it closed the connection.
    pub goaway: bool,
    /// The connection's end as the client library saw it.
    pub result: Result<(), h2::Error>,
}

impl Http2Peer {
    /// Connects and exchanges the HTTP/2 preface and settings.
    pub async fn connect(addr: SocketAddr) -> Http2Peer {
        let stream = TcpStream::connect(addr).await.expect("connecting");
        let frozen = Arc::new(AtomicBool::new(false));
        let goaway = Arc::new(AtomicBool::new(false));
        let io = Freezable {
            stream,
            frozen: Arc::clone(&frozen),
            frames: FrameScanner::default(),
            goaway: Arc::clone(&goaway),
        };
        let (calls, connection) = h2::client::handshake(io)
            .await
            .expect("the HTTP/2 handshake");
        let (tx, closed) = oneshot::channel();
        let goaway_seen = Arc::clone(&goaway);
        tokio::spawn(async move {
            let result = connection.await;
            let _ = tx.send(Closed {
                at: Instant::now(),
                goaway: goaway_seen.load(Ordering::SeqCst),
                result,
            });
        });
        Http2Peer {
            calls,
            authority: addr.to_string(),
            frozen,
            goaway,
            closed,
        }
    }

    /// Starts a health call with an empty request: `Check` (unary) or
    /// `Watch` (server streaming, open until the client leaves).
    async fn start_health_call(&mut self, method: &str) -> Result<h2::RecvStream, h2::Error> {
        let request = http::Request::post(format!(
            "http://{}/grpc.health.v1.Health/{method}",
            self.authority
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a request");
        let mut calls = self.calls.clone().ready().await?;
        let (response, mut body) = calls.send_request(request, false)?;
        body.send_data(Bytes::from_static(EMPTY_GRPC_MESSAGE), true)?;
        let response = response.await?;
        assert_eq!(response.status(), http::StatusCode::OK, "{response:?}");
        Ok(response.into_body())
    }

    /// One unary call (a health check); `Ok` once it answered with gRPC
    /// status 0.
    pub async fn check_health(&mut self) -> Result<(), h2::Error> {
        let mut body = self.start_health_call("Check").await?;
        while let Some(data) = body.data().await {
            let data = data?;
            let _ = body.flow_control().release_capacity(data.len());
        }
        let trailers = body.trailers().await?.expect("trailers");
        assert_eq!(
            trailers.get("grpc-status").map(|s| s.as_bytes()),
            Some(&b"0"[..]),
            "{trailers:?}"
        );
        Ok(())
    }

    /// Opens a health watch, a call that stays open, and reads its first
    /// message; the call lasts as long as the returned stream.
    pub async fn open_watch(&mut self) -> h2::RecvStream {
        let mut body = self
            .start_health_call("Watch")
            .await
            .expect("opening a health watch");
        let first = body.data().await.expect("a first message");
        let first = first.expect("the first message");
        let _ = body.flow_control().release_capacity(first.len());
        body
    }

    /// From now on every byte this peer writes is dropped: to the broker,
    /// its host has gone (it answers no ping), while the peer still sees
    /// what the broker sends, and when it closes.
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Waits for the broker to end the connection, at most `timeout`.
    pub async fn closed(self, timeout: Duration) -> Closed {
        match tokio::time::timeout(timeout, self.closed).await {
            Ok(Ok(closed)) => closed,
            Ok(Err(_)) => panic!("the connection's task ended without a word"),
            Err(_) => panic!("the broker kept the connection open for {timeout:?}"),
        }
    }

    /// Whether the broker has sent GOAWAY by now.
    pub fn goaway_received(&self) -> bool {
        self.goaway.load(Ordering::SeqCst)
    }

    /// Whether the broker has ended the connection by now.
    pub fn is_closed(&self) -> bool {
        !self.closed.is_empty()
    }
}

/// A TCP stream whose writes can be dropped on the floor, and which notes
/// a GOAWAY among the frames it reads.
#[derive(Debug)]
struct Freezable {
    stream: TcpStream,
    frozen: Arc<AtomicBool>,
    frames: FrameScanner,
    goaway: Arc<AtomicBool>,
}

impl AsyncRead for Freezable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        let this = &mut *self;
        if this.frames.scan(&buf.filled()[before..]) {
            this.goaway.store(true, Ordering::SeqCst);
        }
        read
    }
}

/// Follows the frames of a server's byte stream, which starts at a frame.
#[derive(Debug, Default)]
struct FrameScanner {
    header: [u8; FRAME_HEADER_BYTES],
    header_filled: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
}

impl FrameScanner {
    /// Takes the next bytes; whether a GOAWAY frame began among them.
    fn scan(&mut self, mut bytes: &[u8]) -> bool {
        let mut goaway = false;
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let skipped = self.payload_left.min(bytes.len());
                self.payload_left -= skipped;
                bytes = &bytes[skipped..];
                continue;
            }
            let taken = (FRAME_HEADER_BYTES - self.header_filled).min(bytes.len());
            self.header[self.header_filled..self.header_filled + taken]
                .copy_from_slice(&bytes[..taken]);
            self.header_filled += taken;
            bytes = &bytes[taken..];
            if self.header_filled == FRAME_HEADER_BYTES {
                let [a, b, c, kind, ..] = self.header;
                self.payload_left = u32::from_be_bytes([0, a, b, c]) as usize;
                goaway |= kind == FRAME_GOAWAY;
                self.header_filled = 0;
            }
        }
        goaway
    }
}

impl AsyncWrite for Freezable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.frozen.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
