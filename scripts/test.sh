#!/usr/bin/env bash
# Runs the whole test suite: what CI runs and what README.md tells users to run.
#
# Soak runs: POSTBOX_CRASH_CYCLES (engine SIGKILL cycles, default 100),
# POSTBOX_POWER_LOSS_SEEDS (simulated power losses, default 10000),
# POSTBOX_BROKER_KILL_CYCLES (broker process SIGKILL cycles, default 3) and
# POSTBOX_RELAY_KILL_CYCLES (relay process SIGKILL cycles, default 5).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install a Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

# The relay's tests need a PostgreSQL at 127.0.0.1:5432 (user postgres, no
# password): start or install one if none answers.
./scripts/postgres.sh

# The fault tests fail system calls with strace, fill a loop-mounted ext4 and
# run the broker under prlimit: install those tools where they are missing.
./scripts/tools.sh

# postbox-bench's test runs every peer broker that answers (NATS, Redis,
# RabbitMQ streams) and reports the others as not measured; this readies them
# where they are installed (RabbitMQ's stream plugin is off by default).
./scripts/peers.sh

# The integration tests in tests/ start the real binaries (postbox-broker,
# postbox, postbox-relay) from target/debug: build them first, with the profile the tests use.
cargo build --workspace --bins --locked

if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --locked --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked --no-fail-fast
fi
