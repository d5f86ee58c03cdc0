#!/usr/bin/env bash
# Cost of the eBPF guard on allowed traffic: pgbench TPS and a large result's throughput
# through the gateway, with the guard off, in XDP mode and in TC mode.
#
# Three namespaces on a bridge, as in tests/tests/guard.rs: db (PostgreSQL + guard),
# gw (gateway), agent (pgbench, psql). Everything it creates is removed on exit.
#
# usage: sudo ebpf/scripts/guard-overhead.sh [GUARD_BIN] [GATEWAY_BIN]
#   env: SECONDS_PER_RUN (default 20), CLIENTS (default 8), ROUNDS (default 2)
set -euo pipefail

GUARD=${1:-target/release/portcullis-guard}
GATEWAY=${2:-target/release/portcullis}
PGBIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
DUR=${SECONDS_PER_RUN:-20}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-2}
N=240
PORT=5432
PIN=/sys/fs/bpf/portcullis-overhead-$$
WORK=$(mktemp -d /tmp/portcullis-overhead.XXXXXX)
chmod 755 "$WORK"
GUARD=$(readlink -f "$GUARD")
GATEWAY=$(readlink -f "$GATEWAY")

ns() { echo "pco$1"; }
in_ns() { local n; n=$(ns "$1"); shift; nsenter --net=/run/netns/"$n" -- "$@"; }

cleanup() {
  set +e
  [[ -n ${GW_PID:-} ]] && kill "$GW_PID" 2>/dev/null
  "$GUARD" --pin-dir "$PIN" detach >/dev/null 2>&1
  su postgres -c "$PGBIN/pg_ctl stop -D $WORK/data -m immediate" >/dev/null 2>&1
  for h in db gw ag br; do ip netns del "$(ns $h)" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for h in db gw ag br; do ip netns del "$(ns $h)" 2>/dev/null || true; ip netns add "$(ns $h)"; done
ip -n "$(ns br)" link add br0 type bridge && ip -n "$(ns br)" link set br0 up
i=1
for h in db gw ag; do
  ip link add "pco$h" type veth peer name "pco${h}p"
  ip link set "pco$h" netns "$(ns $h)"
  ip link set "pco${h}p" netns "$(ns br)"
  ip -n "$(ns br)" link set "pco${h}p" master br0 up
  ip -n "$(ns $h)" addr add "10.$N.0.$i/24" dev "pco$h"
  ip -n "$(ns $h)" link set "pco$h" up
  ip -n "$(ns $h)" link set lo up
  i=$((i + 1))
done
DB=10.$N.0.1 GW=10.$N.0.2

chown postgres "$WORK"
su postgres -c "$PGBIN/initdb -D $WORK/data -A trust --auth-host=scram-sha-256 -U postgres >/dev/null"
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '$DB'
port = $PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
shared_buffers = '512MB'
max_connections = 100
EOF
echo "host all all 0.0.0.0/0 scram-sha-256" >>"$WORK/data/pg_hba.conf"
in_ns db su postgres -c "$PGBIN/pg_ctl start -w -D $WORK/data -l $WORK/pg.log >/dev/null"
psql -X -q -h "$WORK" -p $PORT -U postgres -c "CREATE ROLE portcullis LOGIN SUPERUSER PASSWORD 'upstream-pw'"
"$PGBIN/pgbench" -q -i -s 10 -h "$WORK" -p $PORT -U postgres postgres >/dev/null 2>&1

VERIFIER=$("$GATEWAY" hash-secret agent-secret)
cat >"$WORK/gw.toml" <<EOF
[server]
listen = "$GW:6432"

[upstream]
host = "$DB"
port = $PORT
user = "portcullis"
password = "upstream-pw"
tls = "disable"

[[identity]]
name = "agent"
secret = "$VERIFIER"
roles = ["agent"]

[log]
level = "warn"
EOF
# Not through in_ns: $! must be the gateway itself (nsenter execs it) for cleanup to kill it.
nsenter --net=/run/netns/"$(ns gw)" -- "$GATEWAY" serve --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 100); do in_ns ag bash -c "exec 3<>/dev/tcp/$GW/6432" 2>/dev/null && break; sleep 0.1; done

export PGPASSWORD=agent-secret
tps() {
  in_ns ag "$PGBIN/pgbench" -n -S -M extended -c "$CLIENTS" -j 2 -T "$DUR" -h "$GW" -p 6432 -U agent postgres 2>/dev/null |
    awk '/^tps/ {print int($3)}'
}
bulk() {
  # ~100 MB of rows through the gateway; MB/s as the client receives them.
  local t0 t1
  t0=$(date +%s.%N)
  in_ns ag psql -X -At -h "$GW" -p 6432 -U agent -d postgres \
    -c "SELECT i, repeat('x', 1000) FROM generate_series(1, 100000) i" >/dev/null
  t1=$(date +%s.%N)
  echo "scale=1; 100.6 / ($t1 - $t0)" | bc
}
guard_on() {
  "$GUARD" --pin-dir "$PIN" detach >/dev/null 2>&1 || true
  in_ns db "$GUARD" --pin-dir "$PIN" run --mount-bpffs --no-follow --mode "$1" \
    -i pcodb -p $PORT -a "$GW/32" >/dev/null
}
guard_off() { "$GUARD" --pin-dir "$PIN" detach >/dev/null 2>&1 || true; }

printf "%-6s %-6s %10s %12s\n" round guard "pgbench-S" "bulk MB/s"
for r in $(seq "$ROUNDS"); do
  for mode in off xdp tc; do
    if [[ $mode == off ]]; then guard_off; else guard_on "$mode"; fi
    printf "%-6s %-6s %10s %12s\n" "$r" "$mode" "$(tps)" "$(bulk)"
  done
done
guard_on xdp
bulk >/dev/null
# A dropped SYN would otherwise wait out the kernel's whole retry schedule (~2 min).
if in_ns ag timeout 3 bash -c "exec 3<>/dev/tcp/$DB/$PORT" 2>/dev/null; then
  echo "guard check FAILED: the agent reached the database directly" >&2
  exit 1
fi
echo "guard check: direct access from the agent dropped; packets from the gateway passed by the guard during one bulk query: $("$GUARD" --pin-dir "$PIN" status --json | awk -F': ' '/"passed"/ {print $2}' | tr -d ',')"
