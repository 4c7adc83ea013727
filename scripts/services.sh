#!/usr/bin/env bash
# Installs what is missing, starts what is stopped and reuses what runs: the database servers
# that the storage backends' tests run against, each on 127.0.0.1 only, and libfaketime for the
# churn test's clock offsets. Idempotent; safe to run before every test run. Needs root (apt,
# service accounts) on Debian.
#
#   PostgreSQL  Debian's cluster `main` on 127.0.0.1:5432, database/user/password `ipubsub`
#   MariaDB     Debian's server on 127.0.0.1:3306,           database/user/password `ipubsub`
#   Cassandra   Apache Cassandra 5.0 from Maven Central on Java 17, 127.0.0.1:9042, one node,
#               files under $IPUBSUB_SERVICES_DIR (default /var/lib/ipubsub-services)
#   MongoDB     SecantusDB (a MongoDB-wire server on WiredTiger, from PyPI, in a virtualenv
#               there too) on 127.0.0.1:27017: no mongod is packaged for Debian
#
# The URLs the tests use (override with the variables of the same name):
#   IPUBSUB_TEST_POSTGRES_URL=postgres://ipubsub:ipubsub@127.0.0.1:5432/ipubsub
#   IPUBSUB_TEST_MYSQL_URL=mysql://ipubsub:ipubsub@127.0.0.1:3306/ipubsub
#   IPUBSUB_TEST_CASSANDRA_NODE=127.0.0.1:9042
#   IPUBSUB_TEST_MONGODB_URL=mongodb://127.0.0.1:27017/
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
services_dir=${IPUBSUB_SERVICES_DIR:-/var/lib/ipubsub-services}

log() { printf '==> services: %s\n' "$*"; }
started=$(date +%s)

# Waits until `probe` succeeds, for at most $2 seconds.
wait_for() {
    local what=$1 limit=$2; shift 2
    local i
    for ((i = 0; i < limit * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "services: $what did not accept connections within ${limit}s" >&2
    return 1
}

missing=()
command -v pg_ctlcluster >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
    || missing+=(postgresql)
command -v mariadbd >/dev/null 2>&1 || missing+=(mariadb-server)
# libfaketime: the churn test shifts one node's clock with it.
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]] || missing+=(faketime)
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # The package lists may be stale on a fresh machine; refresh them only when needed.
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
        || { apt-get update >/dev/null && apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# --- PostgreSQL -------------------------------------------------------------------------
pg_version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $2}' | grep -qx main; then
    log "creating PostgreSQL $pg_version cluster main"
    pg_createcluster "$pg_version" main >/dev/null
fi
conf=/etc/postgresql/$pg_version/main/conf.d/ipubsub.conf
if [[ ! -f $conf ]]; then
    # Loopback only; enough connections for parallel test binaries with their pools.
    printf "listen_addresses = '127.0.0.1'\nmax_connections = 300\n" >"$conf"
    pg_ctlcluster "$pg_version" main stop >/dev/null 2>&1 || true
fi
if pg_lsclusters -h | awk '$2 == "main" {print $4}' | grep -qx online; then
    log "PostgreSQL $pg_version already running"
else
    log "starting PostgreSQL $pg_version"
    pg_ctlcluster "$pg_version" main start
fi
wait_for PostgreSQL 30 pg_isready -q -h 127.0.0.1 -p 5432
runuser -u postgres -- psql -qAt postgres <<'SQL' >/dev/null
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ipubsub') THEN
    CREATE ROLE ipubsub LOGIN PASSWORD 'ipubsub';
  END IF;
END $$;
SELECT 'CREATE DATABASE ipubsub OWNER ipubsub'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'ipubsub')\gexec
SQL
wait_for "PostgreSQL as ipubsub" 10 \
    env PGPASSWORD=ipubsub psql -h 127.0.0.1 -U ipubsub -qAtc 'select 1' ipubsub

# --- MariaDB ----------------------------------------------------------------------------
mysql_conf=/etc/mysql/mariadb.conf.d/90-ipubsub.cnf
if [[ ! -f $mysql_conf ]]; then
    printf '[mysqld]\nbind-address = 127.0.0.1\nmax_connections = 300\n' >"$mysql_conf"
fi
if mariadb-admin --protocol=socket ping >/dev/null 2>&1; then
    log "MariaDB already running"
else
    log "starting MariaDB"
    # The init script works with or without systemd.
    service mariadb start >/dev/null 2>&1 || /etc/init.d/mariadb start >/dev/null
fi
wait_for MariaDB 60 mariadb-admin --protocol=socket ping
mariadb --protocol=socket <<'SQL'
CREATE DATABASE IF NOT EXISTS ipubsub;
CREATE USER IF NOT EXISTS 'ipubsub'@'127.0.0.1' IDENTIFIED BY 'ipubsub';
CREATE USER IF NOT EXISTS 'ipubsub'@'localhost' IDENTIFIED BY 'ipubsub';
GRANT ALL PRIVILEGES ON ipubsub.* TO 'ipubsub'@'127.0.0.1';
GRANT ALL PRIVILEGES ON ipubsub.* TO 'ipubsub'@'localhost';
SQL
wait_for "MariaDB as ipubsub" 10 \
    mariadb -h 127.0.0.1 -P 3306 -u ipubsub -pipubsub -e 'select 1' ipubsub

# --- Cassandra --------------------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
cassandra=$services_dir/cassandra
if port_open 9042; then
    log "Cassandra already running"
else
    command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 \
        || { echo "services: Cassandra needs java (17) and mvn" >&2; exit 1; }
    if [[ ! -f $cassandra/lib/.complete ]]; then
        log "fetching Apache Cassandra from Maven Central"
        rm -rf "$cassandra/lib"
        mvn -q -B -Dstyle.color=never -f "$here/cassandra/pom.xml" dependency:copy-dependencies \
            -DoutputDirectory="$cassandra/lib"
        touch "$cassandra/lib/.complete"
    fi
    mkdir -p "$cassandra/logs"
    sed "s#IPUBSUB_CASSANDRA_DIR#$cassandra#g" "$here/cassandra/cassandra.yaml" >"$cassandra/cassandra.yaml"
    log "starting Cassandra"
    (cd "$cassandra" && exec setsid nohup java @"$here/cassandra/jvm17.options" \
        -Dcassandra.config="file://$cassandra/cassandra.yaml" \
        -Dcassandra.storagedir="$cassandra" -Dcassandra.logdir="$cassandra/logs" \
        -Dlogback.configurationFile="$here/cassandra/logback.xml" \
        -cp "$cassandra/lib/*" org.apache.cassandra.service.CassandraDaemon \
        >"$cassandra/logs/stdout.log" 2>&1 </dev/null &)
fi
# The native protocol port opens last, once the node serves CQL.
wait_for Cassandra 180 port_open 9042 || { tail -n 20 "$cassandra/logs/system.log" >&2; exit 1; }

# --- MongoDB (SecantusDB) -----------------------------------------------------------------
secantus=$services_dir/secantus
secantus_version=0.7.0b3
if port_open 27017; then
    log "MongoDB (SecantusDB) already running"
else
    installed=$("$secantus/venv/bin/pip" show secantusdb 2>/dev/null || true)
    if [[ ! -x $secantus/venv/bin/secantusd-py || $installed != *"Version: $secantus_version"* ]]; then
        log "installing SecantusDB $secantus_version from PyPI"
        python3 -m venv "$secantus/venv"
        "$secantus/venv/bin/pip" install -q --disable-pip-version-check "secantusdb==$secantus_version"
    fi
    mkdir -p "$secantus/data"
    log "starting MongoDB (SecantusDB)"
    # --sync-on-commit: an acknowledged write is on disk, as ipubsub's 200 promises.
    (cd "$secantus" && exec setsid nohup "$secantus/venv/bin/secantusd-py" --host 127.0.0.1 \
        --port 27017 --storage-path "$secantus/data" --standalone --sync-on-commit \
        --log-level WARNING >"$secantus/server.log" 2>&1 </dev/null &)
fi
wait_for "MongoDB (SecantusDB)" 60 port_open 27017 || { tail -n 20 "$secantus/server.log" >&2; exit 1; }

log "PostgreSQL, MariaDB, Cassandra and MongoDB ready in $(($(date +%s) - started))s"
