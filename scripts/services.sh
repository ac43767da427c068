#!/usr/bin/env bash
# Install (when missing) and start the real parts Kraken runs on: dockerd,
# rabbitmq-server (the binary; agents start their own instances), debootstrap
# for the base image. Idempotent; used by install.sh and test.sh.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v rabbitmq-server >/dev/null || need+=(rabbitmq-server)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v iptables >/dev/null || need+=(iptables)
command -v curl >/dev/null || need+=(curl)
command -v git >/dev/null || need+=(git)
if ((${#need[@]})); then
    echo "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Debian package starts a system-wide RabbitMQ on 5672; Kraken supervises
# its own instances, so the system one is stopped when it runs.
if command -v systemctl >/dev/null && systemctl is-active --quiet rabbitmq-server 2>/dev/null; then
    systemctl stop rabbitmq-server || true
fi

if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && systemctl start docker 2>/dev/null; then
        :
    else
        echo "starting dockerd"
        nohup dockerd >/var/log/kraken-dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || { echo "dockerd did not start, see /var/log/kraken-dockerd.log" >&2; exit 1; }
fi

"$(dirname "$0")/base-image.sh"
