# A static site: the repository's files served by busybox httpd on the manifest's port.
# The base image is an argument, so this builds from a registry or from a local import.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends busybox \
 && rm -rf /var/lib/apt/lists/*
COPY . /srv/app
WORKDIR /srv/app
ARG KRAKEN_TEST=""
RUN if [ -n "$KRAKEN_TEST" ]; then sh -c "$KRAKEN_TEST"; fi
USER 65534:65534
CMD ["sh", "-c", "exec busybox httpd -f -v -p \"$PORT\" -h /srv/app"]
