#!/usr/bin/env bash
# Runs every test of Kraken against real parts: installs and starts what is missing
# (dockerd, rabbitmq-server, the debootstrapped base image), builds, and runs cargo nextest.
# Under CI=true a real part that cannot be provided is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    scripts/services.sh
elif [ "${CI:-}" = true ]; then
    echo "scripts/test.sh must run as root under CI (it installs and starts dockerd and RabbitMQ)" >&2
    exit 1
else
    echo "not root: using the dockerd and rabbitmq-server already here; tests needing missing parts say so and skip"
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi

cargo build --all-targets
cargo nextest run --no-fail-fast "$@"
