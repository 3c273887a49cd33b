#!/usr/bin/env bash
# Makes sure every service the test suite talks to is up on loopback, starting the ones that
# are down. Idempotent: a running service is left alone. Used by scripts/test.sh.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }

# up HOST PORT: does a TCP connect succeed within 1 s?
up() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

# wait_up NAME HOST PORT SECONDS
wait_up() {
  local name=$1 host=$2 port=$3 secs=$4 i
  for ((i = 0; i < secs * 4; i++)); do
    up "$host" "$port" && { log "$name is up on $host:$port"; return 0; }
    sleep 0.25
  done
  log "$name did not come up on $host:$port within ${secs}s"
  return 1
}

ensure() {
  local name=$1 host=$2 port=$3 secs=$4; shift 4
  if up "$host" "$port"; then
    log "$name already up on $host:$port"
    return 0
  fi
  log "$name is down; starting it: $*"
  "$@" >/dev/null 2>&1 || log "start command for $name returned non-zero (it may already be starting)"
  wait_up "$name" "$host" "$port" "$secs"
}

ensure PostgreSQL 127.0.0.1 5432 60 \
  bash -c 'pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start'
# Logical replication (the CDC relay, its tests) needs wal_level = logical, which only a
# restart applies: set it with enough slots and senders, and restart only while the running
# server still has another level.
pg_show() { psql -h 127.0.0.1 -U postgres -d postgres -Atc "SHOW $1"; }
if [ "$(pg_show wal_level)" != logical ]; then
  log "PostgreSQL runs with wal_level = $(pg_show wal_level); setting logical and restarting"
  for setting in "wal_level = logical" "max_replication_slots = 32" "max_wal_senders = 32"; do
    psql -h 127.0.0.1 -U postgres -d postgres -qc "ALTER SYSTEM SET $setting"
  done
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main restart
  wait_up PostgreSQL 127.0.0.1 5432 60
  [ "$(pg_show wal_level)" = logical ] || { log "wal_level is still $(pg_show wal_level)"; exit 1; }
fi
log "PostgreSQL wal_level = $(pg_show wal_level)"
ensure MariaDB 127.0.0.1 3306 60 \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
ensure RabbitMQ 127.0.0.1 5672 120 rabbitmq-server -detached
ensure NATS 127.0.0.1 4222 30 \
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log

# SQS: moto's server from PyPI, installed when missing.
if ! command -v moto_server >/dev/null 2>&1; then
  log "installing moto[server] from PyPI"
  python3 -m pip install --quiet 'moto[server]' >/dev/null
fi
ensure "SQS (moto)" 127.0.0.1 4566 60 \
  bash -c 'nohup moto_server -H 127.0.0.1 -p 4566 >/tmp/outbox-moto.log 2>&1 &'

# Kafka protocol: the tansu broker from crates.io (about 10 minutes to build, once), with
# in-memory storage on loopback only.
if ! command -v tansu >/dev/null 2>&1; then
  log "installing tansu from crates.io (cargo install; about 10 minutes the first time)"
  cargo install --locked --quiet tansu --features dynostore
fi
ensure "Kafka (tansu)" 127.0.0.1 9092 60 \
  bash -c 'cd /tmp && nohup env -u STORAGE_ENGINE tansu broker \
    --cluster-id outbox \
    --listener-url tcp://127.0.0.1:9092 \
    --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >/tmp/outbox-tansu.log 2>&1 &'
