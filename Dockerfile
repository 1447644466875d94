# lndmailbox: the daemon (and mailboxctl) in a slim image that runs as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lndmailbox ./lndmailbox
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --create-home --home-dir /home/mailbox --uid 10001 mailbox
USER mailbox
WORKDIR /home/mailbox
ENV PYTHONUNBUFFERED=1 \
    LNDMAILBOX_METRICS_ADDR=0.0.0.0:9185
EXPOSE 9185
# Healthy while the daemon leads its node or stands by on lnd's stream (/health: 200 for
# both, 503 while it starts); /health/leader is 200 on the leader only.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9185/health', timeout=4)"]
ENTRYPOINT ["lndmailbox"]
