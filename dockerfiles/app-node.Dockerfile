# A Node.js app: Debian's nodejs and npm, `npm ci` (or `npm install`) when there is a
# package.json, started by the manifest's `run` command with PORT set. The base image is an
# argument.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY . /srv/app
WORKDIR /srv/app
RUN if [ -f package-lock.json ]; then npm ci --omit=dev; \
    elif [ -f package.json ]; then npm install --omit=dev; fi
ARG KRAKEN_TEST=""
RUN if [ -n "$KRAKEN_TEST" ]; then sh -c "$KRAKEN_TEST"; fi
USER 65534:65534
CMD ["sh", "-c", "exec sh -c \"$KRAKEN_RUN\""]
