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

# The NetKAN corpus is third-party data read in place, never copied into the project:
# $NETKAN_CORPUS, else ../shared/netkan-corpus beside the checkout, else the
# workplace's copy. Its tests skip where it is absent, and fail under CI=true.
if [ -z "${NETKAN_CORPUS:-}" ]; then
    for c in "$PWD/../shared/netkan-corpus" /work/shared/netkan-corpus; do
        if [ -f "$c/manifest.tsv" ]; then
            export NETKAN_CORPUS="$c"
            break
        fi
    done
fi

cargo build --all-targets
cargo nextest run --no-fail-fast "$@"
