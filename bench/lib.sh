# shellcheck shell=bash
# Helpers shared by the bench/ scripts (sourced, not run).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
PG_ADMIN_URL=${DEVID_BENCH_PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# need COMMAND PACKAGE: stop with the install line when a tool is missing.
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: apt-get install -y $2"
}

# The devid binary: $DEVID_BIN, or a release build of the working tree.
devid_bin() {
  if [ -n "${DEVID_BIN:-}" ]; then
    [ -x "$DEVID_BIN" ] || die "DEVID_BIN=$DEVID_BIN is not executable"
    printf '%s\n' "$DEVID_BIN"
    return
  fi
  (cd "$REPO" && cargo build --release -q -p devid >&2) || die "cargo build --release -p devid failed"
  printf '%s\n' "$REPO/target/release/devid"
}

# agent_bin: the devid-agent binary, $DEVID_AGENT_BIN or a release build of the repo's.
agent_bin() {
  if [ -n "${DEVID_AGENT_BIN:-}" ]; then
    [ -x "$DEVID_AGENT_BIN" ] || die "DEVID_AGENT_BIN=$DEVID_AGENT_BIN is not executable"
    printf '%s\n' "$DEVID_AGENT_BIN"
    return
  fi
  (cd "$REPO" && cargo build --release -q -p devid-agent >&2) || die "cargo build --release -p devid-agent failed"
  printf '%s\n' "$REPO/target/release/devid-agent"
}

# admin_credential NAME: an admin API credential made with $DEVID and the data flags in the
# array D; sets CLIENT_ID and exports DEVID_AGENT_CLIENT_SECRET for devid-agent simulate.
admin_credential() {
  local cred
  cred=$("$DEVID" "${D[@]}" credential create --role admin --name "$1" --json 2>>"$W/cli.log") \
    || die "devid credential create failed (log: $W/cli.log)"
  export DEVID_AGENT_CLIENT_SECRET
  DEVID_AGENT_CLIENT_SECRET=$(jq -r .client_secret <<<"$cred")
  CLIENT_ID=$(jq -r .client_id <<<"$cred")
}

# db_create: set DB_URL. $DEVID_BENCH_DATABASE_URL is used as given (and kept); otherwise
# a fresh database devid_bench_<random> is created next to $PG_ADMIN_URL (dropped by
# db_drop).
DB_CREATED=
db_create() {
  if [ -n "${DEVID_BENCH_DATABASE_URL:-}" ]; then
    DB_URL=$DEVID_BENCH_DATABASE_URL
    return
  fi
  local name
  name=devid_bench_$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
  psql "$PG_ADMIN_URL" -qAtX -v ON_ERROR_STOP=1 -c "CREATE DATABASE $name" >/dev/null \
    || die "cannot create a database on $PG_ADMIN_URL (set DEVID_BENCH_DATABASE_URL or DEVID_BENCH_PG_ADMIN_URL)"
  DB_CREATED=$name
  DB_URL="${PG_ADMIN_URL%/*}/$name"
}

db_drop() {
  if [ -n "$DB_CREATED" ]; then
    psql "$PG_ADMIN_URL" -qAtX -c "DROP DATABASE IF EXISTS $DB_CREATED WITH (FORCE)" >/dev/null 2>&1 || true
    DB_CREATED=
  fi
}

# wrk_summary LABEL < wrk --latency output: one line with requests/s, p50 and p99 in ms,
# the number of non-2xx/3xx responses and socket errors.
wrk_summary() {
  awk -v label="$1" '
    function ms(v) {
      if (v ~ /us$/) return (v + 0) / 1000
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/)  return (v + 0) * 60000
      if (v ~ /s$/)  return (v + 0) * 1000
      return v + 0
    }
    /Requests\/sec:/            { rps = $2 }
    $1 == "50%"                 { p50 = ms($2) }
    $1 == "99%"                 { p99 = ms($2) }
    /requests in/               { n = $1 }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/            { gsub(",", ""); err = $4 + $6 + $8 + $10 }
    END {
      printf "%-28s rps=%9.0f  p50=%7.3fms  p99=%7.3fms  requests=%d  non2xx=%d  sockerr=%d\n",
        label, rps, p50, p99, n, bad, err
    }'
}

# bench_workdir PREFIX: set W to a fresh work directory and install the exit trap that stops
# the server (SERVER_PID), drops the database and removes W (kept with KEEP=1).
SERVER_PID=
bench_workdir() {
  W=$(mktemp -d "/tmp/devid-bench-$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}
bench_cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  db_drop
  if [ -n "${KEEP:-}" ]; then say "work directory kept: $W"; else rm -rf "$W"; fi
}

# start_server CMD...: run `devid serve --listen 127.0.0.1:0` (CMD is the binary, maybe
# behind taskset, with its flags) in the background; set SERVER_PID, BASE (its URL) and
# RESPONDER (the responder listener's URL, empty without DEVID_OCSP__LISTEN).
start_server() {
  "$@" >"$W/serve.out" 2>"$W/serve.log" &
  SERVER_PID=$!
  BASE=
  RESPONDER=
  for _ in $(seq 600); do
    BASE=$(sed -n 's/^listening on \(http:[^ ]*\).*/\1/p' "$W/serve.out" | head -n1)
    # The responder listener (ocsp.listen), when the server has one; printed before BASE.
    RESPONDER=$(sed -n 's/^responder listener on \(http:[^ ]*\).*/\1/p' "$W/serve.out" | head -n1)
    [ -n "$BASE" ] && return
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$W/serve.out" "$W/serve.log" >&2; die "devid serve exited"; }
    sleep 0.1
  done
  die "devid serve did not start within 60 s (log: $W/serve.log)"
}

# enroll_one ID: enroll one device by one-time token against $BASE ($DEVID with the data flags
# in the array D): its key and CSR, the answer $W/enroll.json, and $W/leaf.pem,
# $W/chain.pem and $W/issuer.pem. Nothing revokes it, so its certificate is "good".
enroll_one() {
  local token
  token=$("$DEVID" device add --id "$1" --json "${D[@]}" 2>>"$W/cli.log" | jq -r .token)
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/key.pem" \
    -subj "/CN=$1" -out "$W/csr.pem" 2>/dev/null
  jq -n --arg t "$token" --rawfile c "$W/csr.pem" '{method: "token", token: $t, csr: $c}' \
    | curl -sS --fail-with-body -H 'content-type: application/json' --data @- "$BASE/v1/enroll" >"$W/enroll.json" \
    || { cat "$W/enroll.json" >&2; die "enrollment of device $1 failed"; }
  jq -r .certificate "$W/enroll.json" >"$W/leaf.pem"
  jq -r .chain "$W/enroll.json" >"$W/chain.pem"
  awk '/-----BEGIN/ {n++} n == 1' "$W/chain.pem" >"$W/issuer.pem"
}

# --- CPU accounting ---
HZ=$(getconf CLK_TCK)

# proc_ticks PID: user + system clock ticks of one process (all its threads).
proc_ticks() {
  local f a
  f=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  f=${f##*) }
  read -r -a a <<<"$f"
  echo $((a[11] + a[12]))
}

# busy_ticks: clock ticks all cores spent busy (not idle or waiting for I/O).
busy_ticks() {
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat
}

# pg_backends: PostgreSQL backends connected to devid's database ($DB_URL; local server only).
pg_backends() {
  local db=${DB_URL##*/} p
  db=${db%%\?*}
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -q "^postgres: .* $db " && echo "${p#/proc/}"
  done
  return 0
}

# cpu_sampler_start SERVER_PID: every 0.25 s, append "epoch devid postgres agent busy" (clock
# ticks so far: the server, all PostgreSQL processes including the WAL writer, every
# devid-agent, all cores) to $W/cpu.samples; cpu_sampler_stop ends it. It reads /proc with
# shell builtins only (no process per file), so the sampler itself costs little.
CPU_SAMPLER_PID=
cpu_sampler_start() {
  local server=$1
  (
    # Ticks of every process seen so far, kept after it exits (PostgreSQL backends and the
    # simulator may end before the last sample).
    declare -A seen=()
    while :; do
      for f in /proc/[0-9]*/stat; do
        # Fields: pid (comm) state … utime (14th) stime (15th). Only the names compared
        # here matter, and none of them has a space, so word splitting is safe for them.
        { read -r -a x <"$f"; } 2>/dev/null || continue
        case ${x[1]} in
          "(devid)") [ "${x[0]}" = "$server" ] && seen[d${x[0]}]=$((x[13] + x[14])) ;;
          "(postgres)") seen[p${x[0]}]=$((x[13] + x[14])) ;;
          "(devid-agent)") seen[a${x[0]}]=$((x[13] + x[14])) ;;
        esac
      done
      d=0 p=0 a=0
      for k in "${!seen[@]}"; do
        case $k in
          d*) d=$((d + seen[$k])) ;;
          p*) p=$((p + seen[$k])) ;;
          a*) a=$((a + seen[$k])) ;;
        esac
      done
      read -r _ u n sy _ _ irq sirq st _ </proc/stat
      echo "$EPOCHREALTIME $d $p $a $((u + n + sy + irq + sirq + st))"
      sleep 0.25
    done
  ) >>"$W/cpu.samples" 2>/dev/null &
  CPU_SAMPLER_PID=$!
}
cpu_sampler_stop() {
  if [ -n "$CPU_SAMPLER_PID" ]; then
    kill "$CPU_SAMPLER_PID" 2>/dev/null || true
    wait "$CPU_SAMPLER_PID" 2>/dev/null || true
    CPU_SAMPLER_PID=
  fi
}

# cpu_per_op START_EPOCH SECONDS OPS [json]: from $W/cpu.samples, the CPU each side used per
# operation over that window (the last sample before it to the first after it): one line
# "cpu/op: devid=… pg=… agent=… other=… us (cores: …)", or with "json" one JSON object
# {devid_us, pg_us, agent_us, other_us} (null when no samples cover the window).
cpu_per_op() {
  awk -v t0="$1" -v dt="$2" -v n="$3" -v hz="$HZ" -v json="${4:-}" '
    { t = $1 }
    t <= t0 { a0 = $0 }
    t >= t0 + dt && b0 == "" { b0 = $0 }
    END {
      if (a0 == "" || b0 == "" || n <= 0) {
        print (json ? "null" : "cpu/op: no samples cover the phase"); exit
      }
      split(a0, a); split(b0, b)
      w = b[1] - a[1]
      d = b[2] - a[2]; p = b[3] - a[3]; g = b[4] - a[4]; m = b[5] - a[5]
      o = m - d - p - g
      if (json) {
        printf "{\"devid_us\": %.0f, \"pg_us\": %.0f, \"agent_us\": %.0f, \"other_us\": %.0f}\n",
          d / hz * 1e6 / n, p / hz * 1e6 / n, g / hz * 1e6 / n, o / hz * 1e6 / n
        exit
      }
      printf "cpu/op: devid=%.0f pg=%.0f agent=%.0f other=%.0f us (cores: devid %.2f, pg %.2f, agent %.2f, other %.2f)\n",
        d / hz * 1e6 / n, p / hz * 1e6 / n, g / hz * 1e6 / n, o / hz * 1e6 / n,
        d / hz / w, p / hz / w, g / hz / w, o / hz / w
    }' "$W/cpu.samples"
}

# wal_stats: "records fpi bytes" of pg_stat_wal (the whole cluster, PostgreSQL 14 or later).
wal_stats() {
  psql "$DB_URL" -qAtX -F ' ' -c 'SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal'
}
# wal_per_cert BEFORE AFTER N: the WAL written in between, per certificate (N of them).
wal_per_cert() {
  awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN {
    split(a, x, " "); split(b, y, " ")
    if (n <= 0) { print "n/a (no certificate)"; exit }
    printf "%.1f records, %.2f full-page images, %.0f bytes per certificate (%d certificates)\n",
      (y[1] - x[1]) / n, (y[2] - x[2]) / n, (y[3] - x[3]) / n, n }'
}
# wal_lsn: the cluster's current WAL position.
wal_lsn() { psql "$DB_URL" -qAtX -c 'SELECT pg_current_wal_lsn()'; }
# wal_fpi_by_relation LSN0 LSN1: the relations of this database whose pages were written
# whole into the WAL in between (pg_walinspect, PostgreSQL 15 or later; superuser), most
# first, "name=count" on one line; a failure (the WAL already recycled, no extension)
# prints why instead.
wal_fpi_by_relation() {
  psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 -F = -R ' ' 2>&1 -c "
    SELECT coalesce(c.relname, 'relfilenode ' || m[2]), count(*)
    FROM pg_get_wal_records_info('$1', '$2') w
    CROSS JOIN LATERAL regexp_matches(w.block_ref, 'rel \d+/(\d+)/(\d+) fork \w+ blk \d+ \(FPW\)', 'g') m
    LEFT JOIN pg_class c ON c.relfilenode = m[2]::oid
    WHERE m[1]::oid = (SELECT oid FROM pg_database WHERE datname = current_database())
    GROUP BY 1 ORDER BY 2 DESC LIMIT 10" | tr -s '\n' ' ' || true
}
