#!/usr/bin/env bash
# Enrollment and renewal throughput, end to end: a release `devid serve` on a fresh
# PostgreSQL database, and `devid-agent simulate` as the fleet on the same machine.
#
#   bench/enroll.sh [DEVICES=20000] [CONCURRENCY=64] [METHODS=token,x509,symmetric]
#
# For each method: N devices enroll (durable in PostgreSQL), then renew over mutual TLS with
# a full handshake each. Prints the simulator's summary per method and one JSON line per
# method (to keep). Targets (issue #6): token ≥ 5,000/s with p99 ≤ 20 ms, x509 ≥ 3,500/s with
# p99 ≤ 20 ms, renewal ≥ 2,000/s.
#
# Environment: DEVID_BIN, DEVID_AGENT_BIN (use these binaries instead of building), the
# database variables of bench/lib.sh, SERVER_CPUS= / SIM_CPUS= (taskset -c), KEEP=1 (keep
# the work directory), OCSP_SHARE= (a share of devices also asks OCSP), SEED=N (first fill
# the store with N certificates by `devid seed`, 5 % revoked and 20 % expired, to compare
# with a small store: issue #6 wants the figures within 10 %), SEED_ARGS= (more `devid seed`
# flags), WAL_RELATIONS=1 (also print which relations' pages went whole into the WAL, with
# pg_walinspect: the database user must be a superuser), PERF=1 (record the server with
# `perf record` during each run and print its top symbols for each phase alone,
# PERF_TOP=30; implies KEEP=1; PERF_ARGS overrides "-F 499 -g"), RATE= / RENEW_RATE= (an open
# loop: start enrollments / renewals at this many a second, each timed from when it was
# due, instead of CONCURRENCY workers each starting its next device when the last ends;
# CONCURRENCY then bounds how many are in flight), ROUNDS=N (run the methods N times against
# the same server and database, new devices each time, so that the store grows and the
# tables that churn (issuance_intents, challenges) age as in a sustained load; after each
# round it prints their live and dead rows and sizes and devid's resident memory, and at the
# end one line per round).
#
# After each phase it prints the CPU used per operation by devid, all of PostgreSQL (WAL
# writer included), the simulator and everything else, sampled from /proc every 0.2 s; after
# each method, the WAL PostgreSQL wrote per certificate (records, full-page images, bytes).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

DEVICES=${1:-20000}
CONCURRENCY=${2:-64}
METHODS=${3:-token,x509,symmetric}
ROUNDS=${ROUNDS:-1}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive whole number, not '$ROUNDS'"

need psql postgresql-client
need jq jq
if [ -n "${SERVER_CPUS:-}${SIM_CPUS:-}" ]; then need taskset util-linux; fi
if [ -n "${PERF:-}" ]; then need perf linux-perf; KEEP=1; fi

DEVID=$(devid_bin)
AGENT=$(agent_bin)
bench_workdir enroll

db_create
if [ -n "${WAL_RELATIONS:-}" ]; then
  psql "$DB_URL" -qAtX -c 'CREATE EXTENSION IF NOT EXISTS pg_walinspect' >/dev/null \
    || die "WAL_RELATIONS=1 needs pg_walinspect (PostgreSQL 15 contrib) and a superuser"
fi
D=(--data-dir "$W/data" --database-url "$DB_URL")
pin_server=()
pin_sim=()
[ -n "${SERVER_CPUS:-}" ] && pin_server=(taskset -c "$SERVER_CPUS")
[ -n "${SIM_CPUS:-}" ] && pin_sim=(taskset -c "$SIM_CPUS")

# The server: limits off (one source plays the whole fleet), renewal allowed at once.
export DEVID_LOG__LEVEL=warn DEVID_TLS__LISTEN=127.0.0.1:0 DEVID_ENROLL__RENEW_AFTER=0
export DEVID_LIMITS__PER_SOURCE=0 DEVID_LIMITS__PER_DEVICE=0 DEVID_LIMITS__PER_CREDENTIAL=0
if [ -n "${SEED:-}" ]; then
  # A big store first: the CA, then N real certificates of it (binary COPY), then the server.
  "$DEVID" ca init --json "${D[@]}" >"$W/ca.json" 2>"$W/seed.log" || { cat "$W/seed.log" >&2; die "ca init failed"; }
  read -r -a seed_args <<<"${SEED_ARGS:-}"
  say "seeding $SEED certificates ..."
  t_seed=$(date +%s)
  "$DEVID" seed --certificates "$SEED" "${seed_args[@]}" --json "${D[@]}" >"$W/seed.json" 2>>"$W/seed.log" \
    || { cat "$W/seed.log" >&2; die "devid seed failed"; }
  say "seeded in $(($(date +%s) - t_seed)) s: $(jq -c . "$W/seed.json")"
  say "database: $(psql "$DB_URL" -qAtX -c 'SELECT pg_size_pretty(pg_database_size(current_database()))')"
  # Write the seed's dirty pages out now, so that their writeback does not run (as other
  # load) during the measured phases.
  psql "$DB_URL" -qAtX -c CHECKPOINT >/dev/null && sync
fi
start_server "${pin_server[@]}" "$DEVID" serve --listen 127.0.0.1:0 "${D[@]}"
RENEW=$(sed -n 's/^renewal listener on \(https:[^ ]*\).*/\1/p' "$W/serve.out" | head -n1)
[ -n "$RENEW" ] || die "devid serve printed no renewal listener"
admin_credential bench
say "server $BASE (renewal $RENEW), database $DB_URL; $DEVICES devices, concurrency $CONCURRENCY${RATE:+, enroll rate $RATE/s}${RENEW_RATE:+, renew rate $RENEW_RATE/s}"
say "machine: $(nproc) cores, $(uname -r); $(date -u +%Y-%m-%dT%H:%M:%SZ)"
# The PostgreSQL settings that move these figures most (a big store is slower when its hot
# index pages do not fit in shared_buffers).
say "PostgreSQL $(psql "$DB_URL" -qAtX -c "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'max_wal_size')")"

IFS=, read -r -a methods <<<"$METHODS"
# The tables a sustained load churns or grows, as PostgreSQL's statistics see them.
table_stats() {
  psql "$DB_URL" -qAtX -c "SELECT string_agg(format('%s %s live %s dead %s (vacuum %s, autovacuum %s)', relname,
      n_live_tup, n_dead_tup, pg_size_pretty(pg_total_relation_size(relid)), vacuum_count, autovacuum_count), '; ' ORDER BY relname)
    FROM pg_stat_user_tables WHERE relname IN ('issuance_intents', 'challenges', 'devices', 'certificates')"
}
: >"$W/rounds.txt"
for round in $(seq 1 "$ROUNDS"); do
for m in "${methods[@]}"; do
  say ""
  if [ "$ROUNDS" -gt 1 ]; then say "=== $m, round $round of $ROUNDS"; else say "=== $m"; fi
  extra=()
  [ -n "${OCSP_SHARE:-}" ] && extra+=(--ocsp-share "$OCSP_SHARE")
  [ -n "${RATE:-}" ] && extra+=(--rate "$RATE")
  [ -n "${RENEW_RATE:-}" ] && extra+=(--renew-rate "$RENEW_RATE")
  : >"$W/cpu.samples"
  wal0=$(wal_stats)
  [ -n "${WAL_RELATIONS:-}" ] && lsn0=$(wal_lsn)
  cpu_sampler_start "$SERVER_PID"
  perf_pid=
  if [ -n "${PERF:-}" ]; then
    # Wall-clock sample times (-k realtime), so that each phase can be cut out by the
    # simulator's own start and length.
    # shellcheck disable=SC2086
    perf record -q -k realtime ${PERF_ARGS:--F 499 -g} -o "$W/perf-$m.data" -p "$SERVER_PID" 2>"$W/perf-$m.log" &
    perf_pid=$!
  fi
  "${pin_sim[@]}" "$AGENT" simulate --server "$BASE" --renew-server "$RENEW" --client-id "$CLIENT_ID" \
    --devices "$DEVICES" --concurrency "$CONCURRENCY" --method "$m" --renew "${extra[@]}" --json \
    >"$W/$m.json" 2>"$W/$m.log" || { cat "$W/$m.log" >&2; die "simulate --method $m failed"; }
  sleep 0.5  # one more sample after the last phase ends
  cpu_sampler_stop
  wal1=$(wal_stats)
  [ -n "${WAL_RELATIONS:-}" ] && lsn1=$(wal_lsn)
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server died during the $m run (log: $W/serve.log)"
  jq -r --arg m "$m" 'def open: if .rate then " (open loop at \(.rate)/s, latest start \(.max_start_lag_ms) ms late)" else "" end;
    "\($m): enroll \(.enroll.per_second|floor)/s p50 \(.enroll.p50_ms) ms p99 \(.enroll.p99_ms) ms errors \(.enroll.errors|tostring)\(.enroll|open); renew \(.renew.per_second|floor)/s p99 \(.renew.p99_ms) ms errors \(.renew.errors|tostring)\(.renew|open)"' "$W/$m.json"
  # CPU per operation of each phase, by process: where the time goes (the rates alone
  # cannot tell a slow server from a busy machine).
  for phase in enroll renew; do
    read -r t0 dt n < <(jq -r --arg p "$phase" '.[$p] | "\(.started_unix_s) \(.elapsed_s) \(.ok)"' "$W/$m.json")
    say "  $phase $(cpu_per_op "$t0" "$dt" "$n")"
    if [ -n "$perf_pid" ]; then
      say "  perf profile of devid, $m $phase alone, self time by symbol ($W/perf-$m.data):"
      perf report -i "$W/perf-$m.data" --time "$t0,$(awk -v a="$t0" -v b="$dt" 'BEGIN {printf "%.6f", a + b}')" \
        --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -E '^ +[0-9]' | sed 's/ *- *- *$//' | cut -c1-160 | head -n "${PERF_TOP:-30}" >&2 || true
    fi
  done
  # The WAL both phases wrote (the whole cluster's, pg_stat_wal), per certificate issued:
  # full-page images grow with the share of pages that a write touches first after a
  # checkpoint, which is what a big store with random keys (or scattered free space) changes.
  say "  wal $(wal_per_cert "$wal0" "$wal1" "$(jq '.enroll.ok + (.renew.ok // 0)' "$W/$m.json")")"
  if [ -n "${WAL_RELATIONS:-}" ]; then
    say "  full-page images by relation: $(wal_fpi_by_relation "$lsn0" "$lsn1")"
  fi
  jq -c . "$W/$m.json"
  if [ "$ROUNDS" -gt 1 ]; then
    say "  tables: $(table_stats)"
    say "  devid resident memory: $(($(ps -o rss= -p "$SERVER_PID") / 1024)) MiB"
    jq -r --arg m "$m" --arg r "$round" '"round \($r) \($m): enroll \(.enroll.per_second|floor)/s p50 \(.enroll.p50_ms) p99 \(.enroll.p99_ms) ms; renew \(.renew.per_second|floor)/s p99 \(.renew.p99_ms) ms"' \
      "$W/$m.json" >>"$W/rounds.txt"
  fi
done
done
if [ "$ROUNDS" -gt 1 ]; then
  say ""
  say "=== rounds"
  cat "$W/rounds.txt" >&2
fi
