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
# MariaDB with TLS (the TLS tests verify it against its CA): a CA and a server certificate
# for 127.0.0.1 made once with openssl, passed on mariadbd's command line; a server that
# runs without TLS is restarted with it.
my_tls=/var/lib/outbox-mariadb-tls
if [ ! -s "$my_tls/server.pem" ]; then
  log "making a CA and a server certificate for MariaDB's TLS in $my_tls"
  mkdir -p "$my_tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outbox MariaDB test CA" \
    -keyout "$my_tls/ca-key.pem" -out "$my_tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$my_tls/server-key.pem" -out "$my_tls/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$my_tls/san.ext"
  openssl x509 -req -in "$my_tls/server.csr" -CA "$my_tls/ca.pem" -CAkey "$my_tls/ca-key.pem" \
    -CAcreateserial -days 3650 -extfile "$my_tls/san.ext" -out "$my_tls/server.pem" 2>/dev/null
  chown -R mysql:mysql "$my_tls" 2>/dev/null || true
  chmod 600 "$my_tls"/*-key.pem
fi
start_mariadb() {
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
    --ssl-ca="$my_tls/ca.pem" --ssl-cert="$my_tls/server.pem" --ssl-key="$my_tls/server-key.pem"
}
ensure MariaDB 127.0.0.1 3306 60 start_mariadb
my_ssl() { mysql -h 127.0.0.1 -u root -N -e "SHOW VARIABLES LIKE 'have_ssl'" | awk '{print $2}'; }
if [ "$(my_ssl)" != YES ]; then
  log "MariaDB runs without TLS; restarting it with the certificate in $my_tls"
  start-stop-daemon --stop --oknodo --exec /usr/sbin/mariadbd --retry 60 >/dev/null
  start_mariadb
  wait_up MariaDB 127.0.0.1 3306 60
  for _ in $(seq 1 40); do mysql -h 127.0.0.1 -u root -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.25; done
  [ "$(my_ssl)" = YES ] || { log "MariaDB still has no TLS (have_ssl = $(my_ssl))"; exit 1; }
fi
log "MariaDB have_ssl = $(my_ssl)"
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
