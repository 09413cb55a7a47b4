//! A TCP proxy in front of the broker that can lose a reply: once armed, it
//! drops the connection at the first response frame of a call (an HTTP/2
//! HEADERS or DATA frame on a stream other than 0) coming back from the
//! broker. The broker has then finished the call (a unary response is sent
//! only when the handler returns), but the client never hears of it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRAME_HEADER_BYTES: usize = 9;
const FRAME_DATA: u8 = 0x0;
const FRAME_HEADERS: u8 = 0x1;

/// The proxy; it runs until the test's runtime ends.
#[derive(Debug, Clone)]
pub struct CutProxy {
    addr: SocketAddr,
    armed: Arc<AtomicBool>,
    cuts: Arc<AtomicUsize>,
}

impl CutProxy {
    /// Listens on an ephemeral port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let proxy = CutProxy {
            addr: listener.local_addr().expect("the proxy's address"),
            armed: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicUsize::new(0)),
        };
        let state = proxy.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(state.clone().relay(client, server));
            }
        });
        proxy
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cut the connection at the next response.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many replies were lost so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    async fn relay(self, client: TcpStream, server: TcpStream) {
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        let upstream = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        });
        // Frame by frame from the broker, so a response can be recognised.
        loop {
            let mut header = [0u8; FRAME_HEADER_BYTES];
            if server_read.read_exact(&mut header).await.is_err() {
                break;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let kind = header[3];
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if server_read.read_exact(&mut payload).await.is_err() {
                break;
            }
            let response = stream != 0 && (kind == FRAME_HEADERS || kind == FRAME_DATA);
            if response && self.armed.swap(false, Ordering::SeqCst) {
                self.cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if client_write.write_all(&header).await.is_err()
                || client_write.write_all(&payload).await.is_err()
            {
                break;
            }
        }
        upstream.abort();
    }
}
