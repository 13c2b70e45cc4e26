#!/usr/bin/env bash
# Installs the pgvector extension into the machine's PostgreSQL server, when it is missing.
#
# Debian 12 (bookworm) has no pgvector package. Debian 13 (trixie) has its source package, which
# builds unchanged against bookworm's postgresql-server-dev-<major>. We fetch that source with
# `apt-get source` (a registry, no git, no tarball from elsewhere), build it and `make install` it.
#
# Usage: scripts/install-pgvector.sh [PG_MAJOR]   (needs root; prints every step it takes)
set -euo pipefail

PG_MAJOR="${1:-15}"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
PGVECTOR_VERSION="0.8.0"

step() { echo "==> [install-pgvector] $*"; }

if [ ! -x "$PG_CONFIG" ]; then
  echo "install-pgvector: $PG_CONFIG not found: install PostgreSQL ${PG_MAJOR} server binaries first" >&2
  exit 1
fi
SHAREDIR="$("$PG_CONFIG" --sharedir)"
if [ -f "$SHAREDIR/extension/vector.control" ]; then
  step "pgvector already installed in $SHAREDIR/extension"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  cat >&2 <<EOF
install-pgvector: the pgvector extension is missing from PostgreSQL ${PG_MAJOR} ($SHAREDIR/extension/vector.control)
and this is not root, so it cannot be installed automatically. Install it with one of:
  - Debian/Ubuntu with the PGDG repository: apt-get install postgresql-${PG_MAJOR}-pgvector
  - from source: apt-get install postgresql-server-dev-${PG_MAJOR} build-essential, then
    'apt-get source pgvector' (Debian 13) or the pgvector ${PGVECTOR_VERSION} release, 'make && make install'
or set DATABASE_URL to a PostgreSQL server that has pgvector.
EOF
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
SERVER_VERSION="$(dpkg-query -W -f='${Version}' "postgresql-${PG_MAJOR}" 2>/dev/null || true)"
DEV_PKG="postgresql-server-dev-${PG_MAJOR}"
if [ -n "$SERVER_VERSION" ]; then DEV_PKG="${DEV_PKG}=${SERVER_VERSION}"; fi

SRC_LIST=/etc/apt/sources.list.d/datastorage-trixie-src.list
if [ ! -f "$SRC_LIST" ]; then
  step "adding a deb-src line for Debian trixie (source packages only) in $SRC_LIST"
  echo "deb-src http://deb.debian.org/debian trixie main" >"$SRC_LIST"
fi
step "apt-get update"
apt-get update -q >/dev/null
step "apt-get install $DEV_PKG build-essential dpkg-dev"
apt-get install -y -q --no-install-recommends "$DEV_PKG" build-essential dpkg-dev >/dev/null

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
step "apt-get source pgvector=${PGVECTOR_VERSION}* (Debian trixie) in $work"
apt-get source -q --download-only "pgvector=${PGVECTOR_VERSION}-*" >/dev/null 2>&1 || apt-get source -q --download-only pgvector >/dev/null
tarball="$(ls pgvector_*.orig.tar.* | head -n 1)"
mkdir src
tar -xf "$tarball" -C src --strip-components=1
cd src
step "make PG_CONFIG=$PG_CONFIG (no LLVM bitcode) && make install"
make -s PG_CONFIG="$PG_CONFIG" with_llvm=no OPTFLAGS="" >/dev/null
make -s PG_CONFIG="$PG_CONFIG" with_llvm=no install >/dev/null
test -f "$SHAREDIR/extension/vector.control"
step "pgvector $(grep default_version "$SHAREDIR/extension/vector.control" | cut -d"'" -f2) installed for PostgreSQL ${PG_MAJOR}"
