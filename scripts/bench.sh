#!/usr/bin/env bash
# Runs the benchmarks against real parts and writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/services.sh
cargo build --release --tests
cargo nextest run --release --test bench --run-ignored only --no-capture
