#!/usr/bin/env bash
# OCSP responder load test: cached POST, cached GET, and POST with a fresh nonce (signed live).
#
# usage: bench/ocsp.sh [DURATION=10s] [CONNECTIONS=32]
#   CONNECTIONS (and THREADS) may be comma-separated lists: bench/ocsp.sh 10s 16,32,64
#
# Starts its own `devid serve` (release build, fresh temporary data directory, PostgreSQL),
# enrolls one device, checks with openssl that its certificate is "good" over POST, GET and
# POST with a nonce, then runs wrk against each workload and prints one line per workload:
# requests/s, p50 and p99 latency (ms), non-2xx responses, socket errors.
#
# Environment:
#   THREADS=2                 wrk threads (-t), or a list (THREADS=1,2)
#   WORKLOADS="post get nonce"
#   WARMUP=2s                 an unreported wrk run before each workload ("0" to skip)
#   SERVER_CPUS=, WRK_CPUS=   pin the server / wrk with `taskset -c` (e.g. 0 and 1)
#   DEVID_WORKERS=            the server's runtime threads, and the responder listener's
#                             event loops (devid's default: twice the usable cores)
#   LISTENER=responder        where wrk asks: the responder listener (`ocsp.listen`, one
#                             single-threaded event loop per worker) or `main` (the API's
#                             listener, the multi-threaded runtime)
#   DEVID_BIN=                the devid binary (default: cargo build --release -p devid)
#   DEVID_BENCH_DATABASE_URL= an existing PostgreSQL database to use (kept). Default: a fresh
#                             devid_bench_<random> on $DEVID_BENCH_PG_ADMIN_URL
#                             (postgres://postgres@127.0.0.1:5432/postgres), dropped at exit.
#   PERF=1                    record the server with `perf record -g` during each workload
#                             and print its top symbols (PERF_TOP=25); implies KEEP=1;
#                             PERF_ARGS overrides "-F 499 -g" (e.g. "-F 299 --call-graph dwarf")
#   KEEP=1                    keep the work directory (logs, certificates, requests)
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DUR=${1:-10s}
CONNS=${2:-32}
THREADS=${THREADS:-2}
WORKLOADS=${WORKLOADS:-post get nonce}
WARMUP=${WARMUP:-2s}

command -v wrk >/dev/null 2>&1 || die "wrk is missing: apt-get install -y wrk"
need openssl openssl
need curl curl
need jq jq
need psql postgresql-client
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install -y time"
if [ -n "${SERVER_CPUS:-}${WRK_CPUS:-}" ]; then need taskset util-linux; fi
if [ -n "${PERF:-}" ]; then need perf linux-perf; KEEP=1; fi

DEVID=$(devid_bin)
bench_workdir ocsp

db_create
D=(--data-dir "$W/data" --database-url "$DB_URL")
pin_server=()
pin_wrk=()
[ -n "${SERVER_CPUS:-}" ] && pin_server=(taskset -c "$SERVER_CPUS")
[ -n "${WRK_CPUS:-}" ] && pin_wrk=(taskset -c "$WRK_CPUS")

# --- the server ---
LISTENER=${LISTENER:-responder}
case $LISTENER in
  responder) export DEVID_OCSP__LISTEN=127.0.0.1:0 ;;
  main) export DEVID_OCSP__LISTEN=off ;;
  *) die "LISTENER must be responder or main, not $LISTENER" ;;
esac
start_server "${pin_server[@]}" "$DEVID" serve --listen 127.0.0.1:0 "${D[@]}"
if [ "$LISTENER" = responder ]; then
  [ -n "$RESPONDER" ] || die "the server printed no responder listener (a devid from before ocsp.listen?)"
  URL="$RESPONDER/ocsp"
else
  URL="$BASE/ocsp"
fi

# --- one enrolled device ---
enroll_one bench-ocsp-0001
SERIAL=$(jq -r .serial "$W/enroll.json")

# --- requests, checked with openssl ---
openssl ocsp -issuer "$W/issuer.pem" -cert "$W/leaf.pem" -no_nonce -reqout "$W/req.der" >/dev/null
openssl ocsp -issuer "$W/issuer.pem" -cert "$W/leaf.pem" -reqout "$W/nonce.der" >/dev/null

# check_resp LABEL RESPONSE.der [REQUEST.der]: the response verifies against the chain and
# says "good" for the leaf (and, with a request, echoes its nonce).
check_resp() {
  local label=$1 resp=$2 req=${3:-} out
  if [ -n "$req" ]; then
    out=$(openssl ocsp -reqin "$req" -respin "$resp" -issuer "$W/issuer.pem" -CAfile "$W/chain.pem" \
      -resp_text 2>&1) || true
  else
    out=$(openssl ocsp -respin "$resp" -issuer "$W/issuer.pem" -cert "$W/leaf.pem" -CAfile "$W/chain.pem" \
      -no_nonce 2>&1) || true
  fi
  grep -q 'Response verify OK' <<<"$out" || { say "$out"; die "$label: the response does not verify"; }
  grep -q 'Cert Status: good\|: good$' <<<"$out" || { say "$out"; die "$label: not \"good\""; }
  if [ -n "$req" ] && grep -qi 'nonce verify error\|no nonce in response' <<<"$out"; then
    say "$out"; die "$label: nonce not echoed"
  fi
  say "check $label: good, response verifies ($(stat -c %s "$resp") bytes)"
}

# POST, sent by the openssl client itself.
out=$(openssl ocsp -issuer "$W/issuer.pem" -cert "$W/leaf.pem" -CAfile "$W/chain.pem" -no_nonce \
  -url "$URL" -respout "$W/post.der" 2>&1) || true
grep -q 'Response verify OK' <<<"$out" && grep -q "leaf.pem: good" <<<"$out" \
  || { say "$out"; die "openssl ocsp POST check failed"; }
say "check POST (openssl client): good, response verifies ($(stat -c %s "$W/post.der") bytes)"
# POST with a nonce, by the openssl client (it checks the nonce).
out=$(openssl ocsp -issuer "$W/issuer.pem" -cert "$W/leaf.pem" -CAfile "$W/chain.pem" \
  -url "$URL" -respout "$W/post-nonce.der" 2>&1) || true
grep -q 'Response verify OK' <<<"$out" && grep -q "leaf.pem: good" <<<"$out" \
  && ! grep -qi 'nonce' <<<"$out" || { say "$out"; die "openssl ocsp POST-with-nonce check failed"; }
say "check POST with nonce (openssl client): good, nonce echoed ($(stat -c %s "$W/post-nonce.der") bytes)"
# The no-nonce request is answered from the cache: two answers are byte-identical (a fresh
# ECDSA signature would differ).
for n in 1 2; do
  curl -sS -H 'content-type: application/ocsp-request' --data-binary @"$W/req.der" -o "$W/post-$n.der" "$URL"
done
cmp -s "$W/post-1.der" "$W/post-2.der" || die "two POSTs without a nonce got different answers: not cached?"
check_resp "POST (curl)" "$W/post-1.der"
say "check POST (curl): two answers are identical (served from the cache)"
# GET by curl: URL/<percent-encoded base64>.
B64=$(base64 -w0 "$W/req.der" | sed 's/+/%2B/g; s#/#%2F#g; s/=/%3D/g')
code=$(curl -sS -o "$W/get.der" -D "$W/get.headers" -w '%{http_code}' "$URL/$B64")
[ "$code" = 200 ] || die "GET $URL/<b64>: HTTP $code"
check_resp "GET (curl)" "$W/get.der"
say "  GET headers: $(grep -i '^cache-control\|^etag' "$W/get.headers" | tr -d '\r' | tr '\n' ' ')"
# The nonce script's own requests: two per thread differ, and each is answered with its nonce.
if [[ " $WORKLOADS " == *" nonce "* ]]; then
  OCSP_NONCE_REQ="$W/nonce.der" OCSP_DUMP="$W/dump" \
    wrk -t1 -c1 -d1s -s "$BENCH_DIR/ocsp-nonce.lua" "$URL" >/dev/null
  [ -s "$W/dump-1-1.der" ] && [ -s "$W/dump-1-2.der" ] || die "ocsp-nonce.lua wrote no requests"
  cmp -s "$W/dump-1-1.der" "$W/dump-1-2.der" && die "ocsp-nonce.lua sent the same request twice"
  for n in 1 2; do
    curl -sS -H 'content-type: application/ocsp-request' --data-binary @"$W/dump-1-$n.der" \
      -o "$W/dump-resp-$n.der" "$URL"
    check_resp "ocsp-nonce.lua request $n" "$W/dump-resp-$n.der" "$W/dump-1-$n.der"
  done
  cmp -s "$W/dump-resp-1.der" "$W/dump-resp-2.der" && die "two nonce requests got the same response"
fi

# --- load ---
# cpu_ticks PID...: user + system clock ticks of those processes.
cpu_ticks() {
  local t=0 pid f a
  for pid in "$@"; do
    f=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    f=${f##*) }
    read -r -a a <<<"$f"
    t=$((t + a[11] + a[12]))
  done
  echo "$t"
}
# pg_ticks PID...: "pid ticks" lines for those that exist.
pg_ticks() {
  local pid
  for pid in "$@"; do
    if [ -r "/proc/$pid/stat" ]; then echo "$pid $(cpu_ticks "$pid")"; fi
  done
  return 0
}
# run_workload THREADS CONNS WORKLOAD: warm-up, measured run, one summary line.
run_workload() {
  local t=$1 c=$2 w=$3 script label tag pg m0 m1 s0 s1 t0 t1 pgd n wrk_cpu line perf_pid=
  case $w in
    post) script=ocsp-post.lua label="ocsp POST (cached)" ;;
    get) script=ocsp-get.lua label="ocsp GET (cached)" ;;
    nonce) script=ocsp-nonce.lua label="ocsp POST nonce (signed)" ;;
    *) die "unknown workload $w (post, get, nonce)" ;;
  esac
  tag=$w-t$t-c$c
  run_wrk() {
    OCSP_REQ="$W/req.der" OCSP_NONCE_REQ="$W/nonce.der" /usr/bin/time -f '%U %S' -o "$W/wrk.time" \
      "${pin_wrk[@]}" wrk -t"$t" -c"$c" -d"$1" --latency -s "$BENCH_DIR/$script" "$URL"
  }
  if [ "$WARMUP" != 0 ]; then run_wrk "$WARMUP" >/dev/null; fi
  if [ -n "${PERF:-}" ]; then
    # shellcheck disable=SC2086
    perf record -q ${PERF_ARGS:--F 499 -g} -o "$W/perf-$tag.data" -p "$SERVER_PID" 2>"$W/perf-$tag.log" &
    perf_pid=$!
  fi
  pg=$(pg_backends | tr '\n' ' ')
  pg_ticks $pg >"$W/pg0"
  m0=$(busy_ticks) s0=$(cpu_ticks "$SERVER_PID") t0=$(date +%s.%N)
  run_wrk "$DUR" >"$W/wrk-$tag.out"
  m1=$(busy_ticks) s1=$(cpu_ticks "$SERVER_PID") t1=$(date +%s.%N)
  pg_ticks $pg >"$W/pg1"
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server died during the $tag run (log: $W/serve.log)"
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" 2>/dev/null || true
    say "perf profile of devid ($tag), self time by symbol: $W/perf-$tag.data"
    perf report -i "$W/perf-$tag.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
      | grep -E '^ +[0-9]' | sed 's/ *- *- *$//' | cut -c1-160 | head -n "${PERF_TOP:-25}" >&2 || true
  fi
  if [ -n "${VERBOSE:-}" ]; then cat "$W/wrk-$tag.out" >&2; fi
  line=$(wrk_summary "$label t$t c$c" <"$W/wrk-$tag.out")
  # CPU used during the run, in cores: devid (and its microseconds per request), this
  # database's PostgreSQL backends (those present at both ends), wrk, and everything else
  # on the machine (other people's work: compare runs only when it is near 0).
  pgd=$(awk 'NR == FNR {a[$1] = $2; next} ($1 in a) {d += $2 - a[$1]} END {print d + 0}' "$W/pg0" "$W/pg1")
  n=$(awk '/requests in/ {print $1}' "$W/wrk-$tag.out")
  wrk_cpu=$(awk '{print $1 + $2}' "$W/wrk.time")
  printf '%s  %s\n' "$line" "$(awk -v s="$((s1 - s0))" -v p="$pgd" -v m="$((m1 - m0))" -v k="$wrk_cpu" \
    -v t0="$t0" -v t1="$t1" -v n="${n:-0}" -v hz="$HZ" 'BEGIN {
      w = t1 - t0
      printf "cpu: devid=%.2f (%.1f us/req) pg=%.2f wrk=%.2f other=%.2f cores",
        s / hz / w, n ? s / hz * 1e6 / n : 0, p / hz / w, k / w, (m - s - p) / hz / w - k / w }')"
}

say "devid: $DEVID ($("$DEVID" --version))"
say "server: $BASE pid $SERVER_PID${SERVER_CPUS:+ cpus $SERVER_CPUS}${DEVID_WORKERS:+ runtime threads $DEVID_WORKERS}; OCSP asked at $URL ($LISTENER listener); leaf serial $SERIAL"
say "wrk: -t$THREADS -c$CONNS -d$DUR${WRK_CPUS:+ cpus $WRK_CPUS}; warm-up $WARMUP; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
for t in ${THREADS//,/ }; do
  for c in ${CONNS//,/ }; do
    for w in $WORKLOADS; do
      run_workload "$t" "$c" "$w"
    done
  done
done
