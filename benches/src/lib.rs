//! Shared helpers of the Postbox benchmarks: the raw baselines that every
//! engine figure is quoted against, measured in the same run on the same disk,
//! and the in-process broker that the gRPC and relay benchmarks talk to.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postbox_broker::backend::embedded::Embedded;
use postbox_broker::server::{serve, ServerConfig};
use postbox_engine::{Engine, EngineConfig};
use postbox_proto::v1::broker_client::BrokerClient;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

/// Bytes per write and fdatasync in the raw write baseline: the chunk size at
/// which plain sequential writes reach their best durable bandwidth.
pub const RAW_SYNC_CHUNK_BYTES: usize = 1024 * 1024;

/// Bytes per read in the raw read baseline.
pub const RAW_READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Where benchmarks put their files: `POSTBOX_BENCH_DIR`, or the system temp
/// directory. Baselines and the engine use the same directory, so they measure
/// the same disk.
pub fn bench_dir() -> io::Result<tempfile::TempDir> {
    match std::env::var_os("POSTBOX_BENCH_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            tempfile::tempdir_in(dir)
        }
        None => tempfile::tempdir(),
    }
}

/// Writes `total_bytes` sequentially to a new file in `dir`, fdatasyncing every
/// `RAW_SYNC_CHUNK_BYTES`: the durable-write ceiling of this disk. Returns the
/// time the writes and syncs took (creating and deleting the file excluded).
pub fn raw_write_fdatasync(dir: &Path, total_bytes: u64) -> io::Result<Duration> {
    let path = dir.join("raw-baseline.bin");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)?;
    let started = Instant::now();
    let chunk = vec![0xA5u8; RAW_SYNC_CHUNK_BYTES];
    let mut written = 0u64;
    while written < total_bytes {
        let n = (total_bytes - written).min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n])?;
        file.sync_data()?;
        written += n as u64;
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// Reads files sequentially with `RAW_READ_CHUNK_BYTES` positional reads and
/// returns the bytes read: the read ceiling for the same files.
pub fn raw_read(files: &[PathBuf]) -> io::Result<u64> {
    let mut buf = vec![0u8; RAW_READ_CHUNK_BYTES];
    let mut total = 0u64;
    for path in files {
        let file = File::open(path)?;
        let mut position = 0u64;
        loop {
            let n = file.read_at(&mut buf, position)?;
            if n == 0 {
                break;
            }
            position += n as u64;
            total += n as u64;
        }
    }
    Ok(total)
}

/// A broker served in this process until dropped, on a runtime of its own so
/// that the load generators' tasks do not share its worker threads. Its data
/// directory is a fresh [`bench_dir`], deleted on drop.
#[derive(Debug)]
pub struct Broker {
    url: String,
    _server: Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Opens an engine in a fresh directory and serves it on a free loopback
    /// port. Panics when it cannot: only benchmarks use it.
    pub fn start() -> Broker {
        let dir = bench_dir().expect("bench dir");
        let server = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        let engine = Engine::open(EngineConfig::new(dir.path().join("data"))).expect("engine");
        let engine = Arc::new(Embedded::new(Arc::new(engine)));
        let listener = server
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        server.spawn(async move {
            let config = ServerConfig::default();
            let stopped = async {
                let _ = stopped.await;
            };
            if let Err(e) = serve(engine, listener, &config, stopped).await {
                eprintln!("the broker failed: {e}");
            }
        });
        Broker {
            url,
            _server: server,
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// The broker's address, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A raw gRPC client on a new connection, with windows and message limits
    /// large enough for 1000-record batches.
    pub async fn client(&self) -> BrokerClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .tcp_nodelay(true)
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(16 << 20)
            .connect()
            .await
            .expect("connect");
        BrokerClient::new(channel)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Lets the server finish its shutdown before the runtime goes.
        std::thread::sleep(Duration::from_millis(50));
    }
}
