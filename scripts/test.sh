#!/usr/bin/env bash
# Runs every test of Kraken against real parts: installs and starts what is missing
# (dockerd, rabbitmq-server, the debootstrapped base image), builds, and runs cargo nextest.
# Under CI=true a real part that cannot be provided is a failure, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    scripts/services.sh
    # Test-only tools: a third-party mDNS stack (avahi) and the D-Bus it talks over, for
    # the LAN tests, which start their own inside a test namespace. The packages' own
    # services are kept from starting: an avahi on the real interface is not ours to run.
    need=()
    command -v avahi-browse >/dev/null || need+=(avahi-utils)
    command -v avahi-daemon >/dev/null || need+=(avahi-daemon)
    command -v dbus-daemon >/dev/null || need+=(dbus)
    if ((${#need[@]})); then
        echo "installing ${need[*]}"
        made_policy=
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
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
