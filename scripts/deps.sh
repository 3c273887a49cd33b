#!/usr/bin/env bash
# Installs the C client libraries that diesel's synchronous PostgreSQL and MySQL
# connections link against (libpq, the MariaDB client), and OpenSSL, which sqlx's TLS uses,
# from Debian's packages, if pkg-config cannot find them. Idempotent. Used by
# scripts/test.sh.
set -euo pipefail

log() { printf '[deps] %s\n' "$*" >&2; }

missing=()
pkg-config --exists libpq || missing+=(libpq-dev)
pkg-config --exists mysqlclient || missing+=(libmariadb-dev libmariadb-dev-compat)
pkg-config --exists openssl || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)

if ((${#missing[@]} == 0)); then
  log "libpq, the MariaDB client library and OpenSSL are present"
  exit 0
fi
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null 2>&1
  apt-get install -y -q "${missing[@]}" >/dev/null
}
log "installed ${missing[*]}"
