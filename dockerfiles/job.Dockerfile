# The job image: the agent's own executable on a minimal Debian base. The agent builds it
# (tag kraken-job:<version>-<build hash>) with a build context of this file, its executable and the
# host's CA bundle (jobs that fetch over HTTPS must trust what the host trusts).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY kraken /usr/local/bin/kraken
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/kraken"]
CMD ["job", "run"]
