#!/usr/bin/env bash
# Make sure the base image the job and app images build FROM exists.
# Where no registry is reachable (our test machines), build it locally with
# debootstrap from a Debian mirror and `docker import` it.
set -euo pipefail
IMAGE="${KRAKEN_BASE_IMAGE:-debian:bookworm-slim}"
MIRROR="${KRAKEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE present"
    exit 0
fi
if timeout 60 docker pull "$IMAGE" >/dev/null 2>&1; then
    echo "base image $IMAGE pulled"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
dir="$(mktemp -d /var/tmp/kraken-rootfs.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
echo "building $IMAGE with debootstrap from $MIRROR"
debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >/dev/null
# keep the image small: no apt lists, no docs
rm -rf "$dir"/var/lib/apt/lists/* "$dir"/usr/share/doc/* "$dir"/usr/share/man/*
tar -C "$dir" -c . | docker import - "$IMAGE" >/dev/null
echo "base image $IMAGE built"
