#!/usr/bin/env bash
# Runs the whole test suite: what CI runs and what README.md tells users to run.
#
# Soak runs: POSTBOX_CRASH_CYCLES (SIGKILL cycles, default 100) and
# POSTBOX_POWER_LOSS_SEEDS (simulated power losses, default 10000).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install a Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

if command -v cargo-nextest >/dev/null; then
    cargo nextest run --workspace --locked --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked --no-fail-fast
fi
