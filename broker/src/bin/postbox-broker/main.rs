//! `postbox-broker`: checks its file descriptor limit, opens the data
//! directory (recovering it if needed), serves gRPC until SIGINT or SIGTERM,
//! then shuts down gracefully: stops accepting, ends subscriptions, lets
//! in-flight publishes answer, flushes, and exits 0.
//!
//! Once it listens it prints one line on stdout,
//! `postbox-broker listening on ADDR`, so that scripts (and tests) starting it
//! on port 0 learn the address. Logs go to stderr; an error that stops it is
//! one line there, `postbox-broker: error: ...`, and nothing else.

mod descriptors;
mod settings;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use postbox_broker::backend::embedded::Embedded;
use postbox_broker::backend::Backend;
use postbox_broker::server;
use postbox_engine::Engine;
use settings::{LogFormat, Settings};

fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => return fail(&e),
    };
    init_logs(settings.log_format.unwrap_or_default());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("postbox-io")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// Reports the error that stops the broker, once: not also as a log line,
/// which goes to the same stderr.
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("postbox-broker: error: {e:#}");
    ExitCode::FAILURE
}

fn init_logs(format: LogFormat) {
    let filter = std::env::var("POSTBOX_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let engine_config = settings.engine();
    let server_config = settings.server();
    // Checked before the data directory is opened (and perhaps created).
    server_config.validate()?;
    let listen = settings.listen()?;
    let data_dir = engine_config.data_dir.clone();
    descriptors::check(&data_dir, &server_config)?;
    tracing::info!(data_dir = %data_dir.display(), "opening the data directory");
    let started = Instant::now();
    let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("opening the data directory {}", data_dir.display()))?;
    let engine = Arc::new(Embedded::new(Arc::new(engine)));
    tracing::info!(
        topics = engine.engine().list_topics().len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "data directory open"
    );
    let listener = server::bind(listen, server_config.accept_backlog)
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    tracing::info!(%addr, "listening");
    announce(addr)?;
    server::serve(engine.clone(), listener, &server_config, shutdown_signal()).await?;
    close(engine).await?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "postbox-broker listening on {addr}")
        .and_then(|()| stdout.flush())
        .context("writing the listen address to stdout")
}

/// Completes at the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM; only SIGINT stops the broker cleanly");
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot watch SIGINT either");
                std::future::pending::<()>().await;
            }
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => tracing::info!("SIGINT received"),
            Err(e) => tracing::error!(error = %e, "cannot watch SIGINT"),
        },
    }
}

/// Stops the engine's maintenance and flushes it. Connections that outlived
/// the grace period may still hold the engine; they end with the process.
async fn close(backend: Arc<impl Backend>) -> anyhow::Result<()> {
    backend
        .shutdown()
        .await
        .context("flushing the data directory")
}
