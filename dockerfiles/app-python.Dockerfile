# A Python app: python3 (and its requirements.txt, when there is one), started by the
# manifest's `run` command with PORT set. The base image is an argument.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
COPY . /srv/app
WORKDIR /srv/app
RUN if [ -f requirements.txt ]; then pip install --no-cache-dir -r requirements.txt; fi
ARG KRAKEN_TEST=""
RUN if [ -n "$KRAKEN_TEST" ]; then sh -c "$KRAKEN_TEST"; fi
USER 65534:65534
CMD ["sh", "-c", "exec sh -c \"$KRAKEN_RUN\""]
