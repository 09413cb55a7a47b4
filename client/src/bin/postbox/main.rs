//! `postbox`: the command-line client of a Postbox broker.
//!
//! Invariants: stdout carries only data (see `output`); every failure ends
//! as one line on stderr, `postbox: error: ` and the cause chain joined by
//! ": ", with exit status 1, never a panic or a backtrace; a closed stdout
//! pipe (`postbox subscribe ... | head`) ends the command quietly with 0.
//! Logs go to stderr at `warn` unless `RUST_LOG` says otherwise.

mod admin;
mod args;
mod output;
mod publish;
mod subscribe;

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};
use crate::output::Output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return report(&anyhow::Error::new(error).context("cannot start the runtime"))
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for tasks still blocked on the network or on stdin.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => report(&error),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut output = Output::stdout(cli.output);
    let broker = cli.broker.as_str();
    match cli.command {
        Command::Topics(command) => admin::topics(broker, command, &mut output).await,
        Command::Publish(args) => publish::run(broker, args, &mut output).await,
        Command::Subscribe(args) => subscribe::subscribe(broker, args, &mut output).await,
        Command::Replay(args) => subscribe::replay(broker, args, &mut output).await,
        Command::Offsets(command) => admin::offsets(broker, command, &mut output).await,
    }
}

fn init_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    // Fails only if a logger is already installed, which nothing here does.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn report(error: &anyhow::Error) -> ExitCode {
    eprintln!("postbox: error: {error:#}");
    ExitCode::FAILURE
}

/// Whether the error comes from writing to a pipe whose reader is gone.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<io::Error>())
        .any(|io_error| io_error.kind() == io::ErrorKind::BrokenPipe)
}
