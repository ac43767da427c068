#!/usr/bin/env bash
# Runs the benchmarks against real parts and writes docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && scripts/services.sh
cargo build --release --tests
# `scripts/bench.sh pipeline` (or `apps`) runs that section alone and puts it in place
case "${1:-all}" in
    pipeline) only='test(=netkan_pipeline_section)' ;;
    apps) only='test(=app_deployments_section)' ;;
    all) only='test(=benchmark)' ;;
    *) echo "usage: scripts/bench.sh [all|pipeline|apps]" >&2; exit 2 ;;
esac
cargo nextest run --release --test bench --run-ignored only --no-capture -E "$only"
