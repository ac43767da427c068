#!/usr/bin/env bash
# Installs Kraken on this Debian machine and starts the agent.
#
#   sudo scripts/install.sh                               # found a cluster: this agent orchestrates
#   sudo scripts/install.sh --join http://HOST:8080 --token TOKEN   # join one as a worker
#
# Installs what the agent needs (docker.io, rabbitmq-server, a base image built with
# debootstrap where no registry is reachable), builds the agent from this checkout, installs
# it as /usr/local/bin/kraken and starts it: as a systemd service where systemd runs,
# otherwise in the foreground. Extra arguments go to `kraken agent`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 1; }

scripts/services.sh

# Rust: the one from rustup (Debian's cargo is too old for this crate)
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || {
        echo "installing Rust with rustup"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    }
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cc >/dev/null 2>&1 || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config >/dev/null
}
cargo build --release
install -m 0755 target/release/kraken /usr/local/bin/kraken
install -d -m 0711 /var/lib/kraken

if [ -d /run/systemd/system ]; then
    args=""
    for a in "$@"; do args="$args $(printf '%q' "$a")"; done
    cat > /etc/systemd/system/kraken.service <<UNIT
[Unit]
Description=Kraken cluster agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/kraken agent$args
Restart=always
RestartSec=2
KillMode=mixed
TimeoutStopSec=40

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now kraken.service
    echo "kraken is running: systemctl status kraken; journalctl -u kraken -f"
    echo "join token:     sudo kraken token"
    echo "operator token: sudo kraken token --operator"
else
    echo "no systemd here: running the agent in the foreground (Ctrl-C stops it)"
    exec /usr/local/bin/kraken agent "$@"
fi
