#!/bin/sh
# The Kraken installer, as served by an agent at @URL@/install.sh:
#   curl -fsSL @URL@/install.sh | sudo sh
# Downloads the agent for this machine from @URL@, installs what it needs (Docker, RabbitMQ)
# and starts it. The device then asks the cluster to admit it: by itself while the
# cluster's enrollment window is open, else once an operator runs `kraken nodes approve ID`.
#
# KRAKEN_URL overrides where from, KRAKEN_INSTALL_DIR where to (/usr/local/bin), and
# KRAKEN_START=0 installs without installing packages or starting anything.
set -eu
URL="${KRAKEN_URL:-@URL@}"
DIR="${KRAKEN_INSTALL_DIR:-/usr/local/bin}"
case "$(uname -m)" in
    x86_64 | amd64) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    *) ARCH="$(uname -m)" ;;
esac
echo "kraken: downloading the agent for $ARCH from $URL"
TMP="$(mktemp)"
trap 'rm -f "$TMP"' EXIT
if command -v curl >/dev/null 2>&1; then
    curl -fsSL "$URL/download/kraken-$ARCH" -o "$TMP"
else
    wget -qO "$TMP" "$URL/download/kraken-$ARCH"
fi
chmod 0755 "$TMP"
mkdir -p "$DIR"
mv "$TMP" "$DIR/kraken"
"$DIR/kraken" --version
if [ "${KRAKEN_START:-1}" != 1 ]; then
    echo "kraken: installed at $DIR/kraken (not started)"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io rabbitmq-server git >/dev/null
elif ! command -v git >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    # workers clone the apps they deploy
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    cat >/etc/systemd/system/kraken.service <<UNIT
[Unit]
Description=Kraken cluster agent
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart=$DIR/kraken agent --join $URL
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now kraken
    echo "kraken: running as the kraken service; it asks $URL to admit it"
else
    exec "$DIR/kraken" agent --join "$URL"
fi
