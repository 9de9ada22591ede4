#!/usr/bin/env bash
# devid side by side with the peer systems of shared/peers, on the same workloads in one run,
# with the ratios devid ÷ peer.
#
#   bench/peers.sh [DURATION=10s]
#
# OCSP: the same wrk command for every responder (`openssl ocsp`, `cfssl ocspserve`, devid):
#   OCSP_REQ=req.der wrk -t2 -c32 -d$DURATION --latency -s peers/common/ocsp-{post,get}.lua URL
#   (one fixed DER request for a good certificate of that CA, no nonce). Target: devid ≥ 5×.
# Issuance: cfssl's sign API driven by peers/common/issue_load.py --kind cfssl -c C -d SECONDS;
#   devid by `devid-agent simulate --method x509` (IDevID attestation, every certificate
#   committed to PostgreSQL) and `--method token`. Each side runs at each concurrency of its
#   list (ISSUE_C, CONCURRENCY) and its best rate is compared: a closed-loop load generator
#   measures a server's capacity only once it offers enough load, and that point differs
#   (devid's group commit writes bigger batches under more load). Every run is printed and
#   kept in the JSON. Target: devid ≥ 1.5×.
# Prints progress on stderr; on stdout a markdown table (peer, devid, ratio, target, PASS/MISS)
# and, last, one JSON line with the raw figures.
#
# Environment:
#   PEERS_DIR=../shared/peers   the peers' scripts (their setup.sh runs when needed)
#   THREADS=2 CONNS=32          wrk -t / -c (the same for every responder)
#   WARMUP=2s                   an unreported wrk run before each OCSP workload, and a
#                               simulate run of 8×CONCURRENCY devices before each method
#                               ("0": none, except the simulate one when DEVICES is unset)
#   OPENSSL_MULTI=2             `openssl ocsp -multi N` (peers' openssl/start.sh MULTI)
#   ISSUE_C=16,64,256           issue_load.py concurrencies against cfssl (a list)
#   DEVICES=                    devices per `devid-agent simulate` run (default: enough for
#                               DURATION at the rate of a warm-up run)
#   CONCURRENCY=64,128,256      `devid-agent simulate` concurrencies (a list; 256 is where
#                               devid's token enrollments first used both cores on the
#                               thirteenth machine, bench/RESULTS.md)
#   DEVID_BIN, DEVID_AGENT_BIN  binaries to use (default: cargo build --release)
#   database variables of bench/lib.sh; KEEP=1 keeps the work directory
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh disable=SC1091
source "$(dirname "$0")/lib.sh"

DUR=${1:-10s}
[[ $DUR =~ ^([0-9]+)(s|m)?$ ]] || die "DURATION must look like 10s, 10 or 1m (got $DUR)"
SECS=${BASH_REMATCH[1]}
[ "${BASH_REMATCH[2]}" = m ] && SECS=$((SECS * 60))
[ "$SECS" -gt 0 ] || die "DURATION must be at least 1s"
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
WARMUP=${WARMUP:-2s}
OPENSSL_MULTI=${OPENSSL_MULTI:-2}
ISSUE_C=${ISSUE_C:-16,64,256}
DEVICES=${DEVICES:-}
CONCURRENCY=${CONCURRENCY:-64,128,256}
[[ $ISSUE_C =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "ISSUE_C must be a list of concurrencies like 16,64 (got $ISSUE_C)"
[[ $CONCURRENCY =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]] || die "CONCURRENCY must be a list of concurrencies like 64,128 (got $CONCURRENCY)"
IFS=, read -r -a ISSUE_CS <<<"$ISSUE_C"
IFS=, read -r -a SIM_CS <<<"$CONCURRENCY"
OCSP_TARGET=5
ISSUE_TARGET=1.5

PEERS=${PEERS_DIR:-$REPO/../shared/peers}
# The peers' scripts read these; their defaults are the ports and state this script uses.
PEER_ENV=(env -u OCSP_PORT -u API_PORT -u STATE -u N -u R -u FORCE -u MULTI -u LOGLEVEL -u JOBS)
OPENSSL_OCSP=http://127.0.0.1:9080/ CFSSL_OCSP=http://127.0.0.1:8889/ CFSSL_SIGN=http://127.0.0.1:8888/api/v1/cfssl/sign
if [ ! -x "$PEERS/run_bench.sh" ] || [ ! -d "$PEERS/common" ]; then
  die "no peer scripts in $PEERS (set PEERS_DIR to shared/peers)"
fi
PEERS=$(cd "$PEERS" && pwd)

# --- tools (the peers' setup.sh would apt-get them itself: stop with the line instead) ---
need wrk wrk
need openssl openssl
need curl curl
need jq jq
need psql postgresql-client
need cfssl golang-cfssl
need cfssljson golang-cfssl
need sqlite3 sqlite3
need cc gcc
need ss iproute2
need setsid util-linux
need python3 python3
[ -e /usr/include/dlfcn.h ] || die "C headers are missing (openssl ocsp shim): apt-get install -y libc6-dev"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install -y time"
python3 -c 'import ensurepip' 2>/dev/null || die "python3 venv support is missing: apt-get install -y python3-venv"

DEVID=$(devid_bin)
AGENT=$(agent_bin)

bench_workdir peers
mkdir -p "$W/res"

# --- peer servers: started with the peers' own scripts, stopped at exit ---
STARTED=()
SETUP_RUNNING=
peer_stop_cmd() {
  case $1 in
    openssl) "${PEER_ENV[@]}" "$PEERS/openssl/stop.sh" ;;
    cfssl-ocsp) "${PEER_ENV[@]}" "$PEERS/cfssl/stop.sh" ocsp ;;
    cfssl-api) "${PEER_ENV[@]}" "$PEERS/cfssl/stop.sh" api ;;
  esac
}
peers_cleanup() {
  local p
  for p in "${STARTED[@]}"; do peer_stop_cmd "$p" >>"$W/peers.log" 2>&1 || true; done
  # An interrupted cfssl setup.sh leaves the sign API it started for itself.
  if [ "$SETUP_RUNNING" = cfssl ]; then "${PEER_ENV[@]}" "$PEERS/cfssl/stop.sh" api >>"$W/peers.log" 2>&1 || true; fi
  bench_cleanup
}
trap peers_cleanup EXIT

# peer_start NAME PIDFILE PORT COMMAND...: refuse a peer that already runs (another benchmark's:
# it would share the cores) or a busy port, then start it.
peer_start() {
  local name=$1 pidfile=$2 port=$3
  shift 3
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "$name already runs (pid $(cat "$pidfile"), $pidfile): another benchmark? Stop it with its stop.sh first"
  fi
  if ss -Hltn "sport = :$port" | grep -q .; then die "port $port ($name) is already in use"; fi
  STARTED+=("$name")
  "$@" >>"$W/peers.log" 2>&1 || { tail -n 20 "$W/peers.log" >&2; die "$name did not start"; }
}
peer_stop() {
  local p keep=()
  peer_stop_cmd "$1" >>"$W/peers.log" 2>&1 || true
  for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  STARTED=("${keep[@]}")
}

# --- CPU accounting: who used the cores during a run ---
# group_pids PGID: the processes of that process group (a peer's server and its children).
group_pids() {
  local f s a
  for f in /proc/[0-9]*/stat; do
    s=$(cat "$f" 2>/dev/null) || continue
    s=${s##*) }
    read -r -a a <<<"$s"
    if [ "${a[2]}" = "$1" ]; then f=${f#/proc/}; echo "${f%/stat}"; fi
  done
  return 0
}
# snapshot FILE PID...: "pid ticks" lines.
snapshot() {
  local out=$1 pid t
  shift
  : >"$out"
  for pid in "$@"; do
    if t=$(proc_ticks "$pid"); then echo "$pid $t" >>"$out"; fi
  done
}
# ticks_delta BEFORE AFTER: ticks used in between by the processes of AFTER (new ones count
# from zero).
ticks_delta() {
  awk 'NR == FNR {a[$1] = $2; next} {d += $2 - (($1 in a) ? a[$1] : 0)} END {print d + 0}' "$1" "$2"
}
# server_pids: the processes of the server under test ($SRV: devid, or a peer's pid file).
server_pids() {
  if [ "$SRV" = devid ]; then echo "$SERVER_PID"; else group_pids "$(cat "$SRV")"; fi
}
# measured KEY COMMAND...: run the load generator with its output in $W/KEY.out, and record
# in $W/KEY.cpu the cores used during the run by the server, devid's PostgreSQL backends,
# the load generator itself and everything else on the machine ("other": compare runs only
# when it is near 0).
measured() {
  local key=$1 m0 m1 t0 t1 srv pg=() rc=0
  shift
  mapfile -t srv < <(server_pids)
  if [ "$SRV" = devid ]; then mapfile -t pg < <(pg_backends); fi
  snapshot "$W/$key.srv0" "${srv[@]}"
  snapshot "$W/$key.pg0" "${pg[@]}"
  m0=$(busy_ticks) t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$W/$key.time" "$@" >"$W/$key.out" 2>"$W/$key.err" || rc=$?
  m1=$(busy_ticks) t1=$(date +%s.%N)
  mapfile -t srv < <(printf '%s\n' "${srv[@]}"; server_pids)
  if [ "$SRV" = devid ]; then mapfile -t pg < <(printf '%s\n' "${pg[@]}"; pg_backends); fi
  mapfile -t srv < <(printf '%s\n' "${srv[@]}" | sort -u)
  mapfile -t pg < <(printf '%s\n' "${pg[@]}" | sed '/^$/d' | sort -u)
  snapshot "$W/$key.srv1" "${srv[@]}"
  snapshot "$W/$key.pg1" "${pg[@]}"
  awk -v s="$(ticks_delta "$W/$key.srv0" "$W/$key.srv1")" -v p="$(ticks_delta "$W/$key.pg0" "$W/$key.pg1")" \
    -v m="$((m1 - m0))" -v k="$(awk '{print $1 + $2}' "$W/$key.time" 2>/dev/null || echo 0)" \
    -v t0="$t0" -v t1="$t1" -v hz="$HZ" 'BEGIN {
      w = t1 - t0; other = (m - s - p) / hz / w - k / w; if (other < 0) other = 0
      printf "{\"server_cores\": %.2f, \"pg_cores\": %.2f, \"client_cores\": %.2f, \"other_cores\": %.2f, \"wall_s\": %.2f}\n",
        s / hz / w, p / hz / w, k / w, other, w }' >"$W/$key.cpu"
  return "$rc"
}
# result KEY JSON: keep one measurement, with its CPU figures and the CPU time per operation
# (request or certificate) of the server and of PostgreSQL, in microseconds: unlike the
# rates, these hardly move when other work shares the cores.
result() {
  jq -c --slurpfile cpu "$W/$1.cpu" '. + {cpu: ($cpu[0] as $c | $c + if .count > 0 then
    {server_us_per_op: ($c.server_cores * $c.wall_s * 1e6 / .count | round),
     pg_us_per_op: ($c.pg_cores * $c.wall_s * 1e6 / .count | round)} else {} end)}' <<<"$2" >"$W/res/$1.json"
}
cpu_text() {
  jq -r '.cpu | "cpu: server=\(.server_cores) (\(.server_us_per_op) us/op) pg=\(.pg_cores) (\(.pg_us_per_op) us/op) client=\(.client_cores) other=\(.other_cores) cores"' "$W/res/$1.json"
}
na_result() { jq -nc --arg r "$2" '{na: $r}' >"$W/res/$1.json"; }

# --- OCSP ---
# ocsp_check NAME URL ISSUER CHAIN CERT: the openssl client gets "good" and a response that
# verifies (as peers/common/ocsp_check.sh asks); the fixed request for wrk ($W/NAME-req.der,
# no nonce) gets the same over POST; GET works or $W/NAME-get.na says why not.
ocsp_check() {
  local name=$1 url=$2 issuer=$3 chain=$4 cert=$5 out code b64
  out=$(openssl ocsp -issuer "$issuer" -cert "$cert" -url "$url" -CAfile "$chain" 2>&1) || true
  if ! grep -q 'Response verify OK' <<<"$out" || ! grep -q "$cert: good" <<<"$out"; then
    say "$out"; die "$name: the openssl client did not get a verified \"good\" from $url"
  fi
  openssl ocsp -issuer "$issuer" -cert "$cert" -no_nonce -reqout "$W/$name-req.der" >/dev/null 2>&1
  code=$(curl -sS --max-time 5 -o "$W/$name-post.der" -w '%{http_code}' -H 'content-type: application/ocsp-request' \
    --data-binary @"$W/$name-req.der" "$url") || code=000
  [ "$code" = 200 ] || die "$name: POST of the wrk request: HTTP $code"
  out=$(openssl ocsp -respin "$W/$name-post.der" -issuer "$issuer" -cert "$cert" -CAfile "$chain" -no_nonce 2>&1) || true
  if ! grep -q 'Response verify OK' <<<"$out" || ! grep -q ": good$" <<<"$out"; then
    say "$out"; die "$name: the answer to the wrk request is not a verified \"good\""
  fi
  say "check $name POST: good, verifies ($(stat -c %s "$W/$name-post.der") bytes)"
  rm -f "$W/$name-get.na"
  b64=$(base64 -w0 "$W/$name-req.der" | sed 's/+/%2B/g; s#/#%2F#g; s/=/%3D/g')
  code=$(curl -sS --max-time 5 -o "$W/$name-get.der" -w '%{http_code}' "${url%/}/$b64") || code=000
  if [ "$code" != 200 ]; then
    echo "HTTP $code" >"$W/$name-get.na"
  else
    out=$(openssl ocsp -respin "$W/$name-get.der" -issuer "$issuer" -cert "$cert" -CAfile "$chain" -no_nonce 2>&1) || true
    if ! grep -q 'Response verify OK' <<<"$out" || ! grep -q ": good$" <<<"$out"; then
      echo "no verified good answer" >"$W/$name-get.na"
    fi
  fi
  if [ -f "$W/$name-get.na" ]; then
    say "check $name GET: $(cat "$W/$name-get.na"): GET not measured"
  else
    say "check $name GET: good, verifies"
  fi
}

# ocsp_load NAME URL: wrk POST and (when its check passed) GET, the same command for everyone.
ocsp_load() {
  local name=$1 url=$2 m key line v
  for m in post get; do
    key=ocsp-$m-$name
    if [ "$m" = get ] && [ -f "$W/$name-get.na" ]; then
      na_result "$key" "$(cat "$W/$name-get.na")"
      continue
    fi
    if [ "$WARMUP" != 0 ]; then
      OCSP_REQ="$W/$name-req.der" wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" -s "$PEERS/common/ocsp-$m.lua" "$url" >/dev/null \
        || die "wrk warm-up failed against $name"
    fi
    OCSP_REQ="$W/$name-req.der" measured "$key" \
      wrk -t"$THREADS" -c"$CONNS" -d"$DUR" --latency -s "$PEERS/common/ocsp-$m.lua" "$url" \
      || { cat "$W/$key.err" >&2; die "wrk failed against $name"; }
    line=$(wrk_summary "ocsp ${m^^} $name" <"$W/$key.out")
    v=$(sed -E 's/= +/=/g' <<<"$line")
    jq -nc --argjson rps "$(grep -o 'rps=[0-9.]*' <<<"$v" | cut -d= -f2)" \
      --argjson p50 "$(grep -o 'p50=[0-9.]*' <<<"$v" | cut -d= -f2)" \
      --argjson p99 "$(grep -o 'p99=[0-9.]*' <<<"$v" | cut -d= -f2)" \
      --argjson n "$(grep -o 'requests=[0-9]*' <<<"$v" | cut -d= -f2)" \
      --argjson bad "$(grep -o 'non2xx=[0-9]*' <<<"$v" | cut -d= -f2)" \
      --argjson sock "$(grep -o 'sockerr=[0-9]*' <<<"$v" | cut -d= -f2)" \
      '{per_second: $rps, p50_ms: $p50, p99_ms: $p99, count: $n, errors: ($bad + $sock), non2xx: $bad, socket_errors: $sock}' \
      >"$W/$key.json"
    result "$key" "$(cat "$W/$key.json")"
    say "$line  $(cpu_text "$key")"
  done
}

# --- set-up ---
say "peers: $PEERS (setup.sh is a no-op when done; the first time takes about a minute)"
for p in openssl cfssl; do
  SETUP_RUNNING=$p
  "${PEER_ENV[@]}" "$PEERS/$p/setup.sh" >"$W/setup-$p.log" 2>&1 || { tail -n 30 "$W/setup-$p.log" >&2; die "$PEERS/$p/setup.sh failed"; }
  SETUP_RUNNING=
  say "  $(tail -n 1 "$W/setup-$p.log")"
done
"$PEERS/common/venv.sh" >"$W/venv.log" 2>&1 || {
  cat "$W/venv.log" >&2
  die "the load client's venv failed: python3 -m venv $PEERS/.venv && $PEERS/.venv/bin/pip install aiohttp httpx cryptography"
}
PY=$PEERS/.venv/bin/python

# devid: a fresh PostgreSQL database and data directory, as bench/ocsp.sh; the server settings
# of bench/enroll.sh (rate limits off: one source plays the whole fleet).
db_create
D=(--data-dir "$W/data" --database-url "$DB_URL")
# OCSP is asked at the responder listener (ocsp.listen), as a deployment for brokers has it.
export DEVID_LOG__LEVEL=warn DEVID_TLS__LISTEN=127.0.0.1:0 DEVID_OCSP__LISTEN=127.0.0.1:0
export DEVID_LIMITS__PER_SOURCE=0 DEVID_LIMITS__PER_DEVICE=0 DEVID_LIMITS__PER_CREDENTIAL=0
start_server "$DEVID" serve --listen 127.0.0.1:0 "${D[@]}"
# One enrolled device (token), not revoked: its certificate is "good".
enroll_one bench-peers-0001
admin_credential bench-peers

# --- versions and the machine ---
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
NPROC=$(nproc)
KERNEL=$(uname -r)
PG_DURABLE=$(psql "$DB_URL" -qAtX -c "SELECT current_setting('fsync') || ' ' || current_setting('synchronous_commit')")
jq -n --arg devid "$("$DEVID" --version)" --arg agent "$("$AGENT" --version)" \
  --arg tree "$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown)" \
  --arg openssl "$(openssl version | cut -d' ' -f1-2)" \
  --arg cfssl "$(dpkg-query -W -f='golang-cfssl ${Version}' golang-cfssl 2>/dev/null || cfssl version | head -n1)" \
  --arg wrk "$(wrk -v 2>&1 | head -n1 | cut -d' ' -f1-2)" \
  --arg pg "PostgreSQL $(psql "$DB_URL" -qAtX -c 'SHOW server_version' | cut -d' ' -f1) (fsync, synchronous_commit: ${PG_DURABLE// /, })" \
  --arg py "$("$PY" -c 'import sys, aiohttp; print("Python", sys.version.split()[0], "aiohttp", aiohttp.__version__)')" \
  '{devid: $devid, "devid-agent": $agent, tree: $tree, openssl: $openssl, cfssl: $cfssl, wrk: $wrk,
    postgresql: $pg, issue_load: $py}' >"$W/versions.json"
say "$DATE, $NPROC cores, Linux $KERNEL, load $(cut -d' ' -f1-3 /proc/loadavg)"
say "devid $DEVID at $BASE, database $DB_URL"
case $PG_DURABLE in
  "on off" | off*) say "warning: PostgreSQL fsync, synchronous_commit = $PG_DURABLE: commits are not durable" ;;
esac

# --- OCSP: openssl, cfssl, devid ---
say ""
say "== OCSP: wrk -t$THREADS -c$CONNS -d$DUR --latency (warm-up $WARMUP), POST and GET of one request"
S=$PEERS/openssl/state
peer_start openssl "$S/ocsp.pid" 9080 "${PEER_ENV[@]}" MULTI="$OPENSSL_MULTI" "$PEERS/openssl/start.sh"
ocsp_check openssl "$OPENSSL_OCSP" "$S/int.pem" "$S/chain.pem" "$S/good.pem"
SRV=$S/ocsp.pid ocsp_load openssl "$OPENSSL_OCSP"
peer_stop openssl

S=$PEERS/cfssl/state
peer_start cfssl-ocsp "$S/ocsp.pid" 8889 "${PEER_ENV[@]}" "$PEERS/cfssl/start.sh" ocsp
ocsp_check cfssl "$CFSSL_OCSP" "$S/int.pem" "$S/chain.pem" "$S/good.pem"
SRV=$S/ocsp.pid ocsp_load cfssl "$CFSSL_OCSP"
peer_stop cfssl-ocsp

[ -n "$RESPONDER" ] || die "the server printed no responder listener (a devid from before ocsp.listen?)"
ocsp_check devid "$RESPONDER/ocsp" "$W/issuer.pem" "$W/chain.pem" "$W/leaf.pem"
SRV=devid ocsp_load devid "$RESPONDER/ocsp"

# --- issuance: cfssl sign API, devid x509 and token ---
# best KEY RUN...: keep as KEY the run (a result key) with the highest rate, with its
# concurrency (the part of the run's key after "-c").
best() {
  local key=$1 r top=
  shift
  for r in "$@"; do
    if [ -z "$top" ] || jq -e --slurpfile t "$W/res/$top.json" '.per_second > $t[0].per_second' "$W/res/$r.json" >/dev/null; then
      top=$r
    fi
  done
  jq -c --argjson c "${top##*-c}" '. + {concurrency: $c}' "$W/res/$top.json" >"$W/best-$key.json"
  mv "$W/best-$key.json" "$W/res/$key.json"
}

say ""
say "== issuance: cfssl with issue_load.py -c ${ISSUE_CS[*]} -d $SECS; devid with simulate, ${DEVICES:-enough devices for $DUR}, concurrency ${SIM_CS[*]}"
peer_start cfssl-api "$S/api.pid" 8888 "${PEER_ENV[@]}" "$PEERS/cfssl/start.sh" api
runs=()
for c in "${ISSUE_CS[@]}"; do
  key=issue-cfssl-c$c
  SRV=$S/api.pid measured "$key" "$PY" "$PEERS/common/issue_load.py" --kind cfssl \
    --url "$CFSSL_SIGN" -d "$SECS" -c "$c" || true
  jq -e .certs_per_s "$W/$key.out" >/dev/null 2>&1 || { cat "$W/$key.err" >&2; die "issue_load.py against cfssl failed"; }
  result "$key" "$(jq -c '{per_second: .certs_per_s, p50_ms, p99_ms, count: .issued, errors, seconds}' "$W/$key.out")"
  say "issue cfssl sign API, c=$c: $(jq -r '"\(.certs_per_s)/s p50 \(.p50_ms) ms p99 \(.p99_ms) ms issued \(.issued) errors \(.errors)"' "$W/$key.out")  $(cpu_text "$key")"
  runs+=("$key")
done
best issue-cfssl "${runs[@]}"
peer_stop cfssl-api

certs_in_db() { psql "$DB_URL" -qAtX -c 'SELECT count(*) FROM certificates'; }
for m in x509 token; do
  runs=()
  for c in "${SIM_CS[@]}"; do
    key=issue-devid-$m-c$c
    SIM=("$AGENT" simulate --server "$BASE" --client-id "$CLIENT_ID" --concurrency "$c" --json)
    WARM_DEVICES=$((c * 8))
    n=${DEVICES:-0}
    if [ "$WARMUP" != 0 ] || [ "$n" = 0 ]; then
      # The warm-up: unreported, and its rate sizes the measured run when DEVICES is not set.
      "${SIM[@]}" --devices "$WARM_DEVICES" --method "$m" >"$W/warm-$m.json" 2>"$W/warm-$m.err" \
        || { cat "$W/warm-$m.err" >&2; die "devid-agent simulate --method $m (warm-up) failed"; }
      if [ "$n" = 0 ]; then
        n=$(jq --argjson d "$SECS" --argjson min "$WARM_DEVICES" '[.enroll.per_second * $d | floor, $min] | max' "$W/warm-$m.json")
        say "$m warm-up, c=$c: $(jq -r '.enroll.per_second | floor' "$W/warm-$m.json")/s over $WARM_DEVICES devices, so $n devices for $DUR"
      fi
    fi
    before=$(certs_in_db)
    # The run's window also holds the simulator's pre-registration of its devices: the CPU
    # per certificate is taken from samples of the enrollment phase alone.
    : >"$W/cpu.samples"
    cpu_sampler_start "$SERVER_PID"
    SRV=devid measured "$key" "${SIM[@]}" --devices "$n" --method "$m" \
      || { cpu_sampler_stop; cat "$W/$key.err" >&2; die "devid-agent simulate --method $m failed"; }
    sleep 0.3  # one sample after the phase ends
    cpu_sampler_stop
    kill -0 "$SERVER_PID" 2>/dev/null || die "devid died during the $m run (log: $W/serve.log)"
    added=$(($(certs_in_db) - before))
    ok=$(jq .enroll.ok "$W/$key.out")
    [ "$added" -ge "$ok" ] || die "simulate reports $ok enrolled ($m) but only $added certificates are in PostgreSQL"
    result "$key" "$(jq -c '{devices} + (.enroll | {per_second, p50_ms, p99_ms, count: .ok,
      errors: ([.errors[]] | add // 0), error_kinds: .errors, seconds: .elapsed_s})' "$W/$key.out")"
    read -r t0 dt n_ok < <(jq -r '.enroll | "\(.started_unix_s) \(.elapsed_s) \(.ok)"' "$W/$key.out")
    phase=$(cpu_per_op "$t0" "$dt" "$n_ok" json)
    if [ "$phase" != null ]; then
      jq -c --argjson p "$phase" '.cpu += {server_us_per_op: $p.devid_us, pg_us_per_op: $p.pg_us, window: "enrollment phase"}' \
        "$W/res/$key.json" >"$W/res/$key.json.new" && mv "$W/res/$key.json.new" "$W/res/$key.json"
    fi
    say "issue devid $m, c=$c: $(jq -r '.enroll | "\(.per_second|floor)/s p50 \(.p50_ms) ms p99 \(.p99_ms) ms enrolled \(.ok) in \(.elapsed_s) s errors \(.errors|tostring)"' "$W/$key.out"), $added certificates in PostgreSQL  $(cpu_text "$key")"
    if awk -v e="$(jq .enroll.elapsed_s "$W/$key.out")" -v d="$SECS" 'BEGIN {exit !(e < d / 2)}'; then
      say "  note: the $m run lasted less than half of $DUR; DEVICES=$(jq --argjson d "$SECS" '.enroll.per_second * $d | floor' "$W/$key.out") would fill it"
    fi
    runs+=("$key")
  done
  best "issue-devid-$m" "${runs[@]}"
done
SERVE_ERRORS=$(grep -c 'ERROR\|panicked' "$W/serve.log" || true)
[ "$SERVE_ERRORS" = 0 ] || say "warning: devid logged $SERVE_ERRORS error lines (log: $W/serve.log; KEEP=1 keeps it)"

# --- this machine's ECDSA P-256, one core: the floor under every issuance figure ---
# devid signs and verifies with aws-lc-rs, which measures the same as OpenSSL here (issue #6
# note). A token enrollment makes 2 verifications (the CSR, the certificate after signing)
# and 2 signatures (the certificate, its OCSP answer); x509 adds 2 verifications (the IDevID
# chain, the possession signature). cfssl's sign API makes 1 of each and Go's check after
# signing (1 more verification).
read -r ECDSA_SIGN ECDSA_VERIFY < <(openssl speed -seconds 1 ecdsap256 2>/dev/null | awk '/\(nistp256\)/ {print $(NF-1), $NF}')
[ -n "${ECDSA_VERIFY:-}" ] || { ECDSA_SIGN=0; ECDSA_VERIFY=0; }
say "ECDSA P-256 (openssl speed, one core): $ECDSA_SIGN signatures/s, $ECDSA_VERIFY verifications/s"

# --- the table and the JSON line ---
for f in "$W"/res/*.json; do jq -c --arg k "$(basename "$f" .json)" '{($k): .}' "$f"; done | jq -sc add >"$W/runs.json"
jq -n --arg date "$DATE" --argjson nproc "$NPROC" --arg kernel "$KERNEL" --arg dur "$DUR" \
  --argjson conc "[$CONCURRENCY]" \
  --argjson t "$THREADS" --argjson c "$CONNS" --argjson ic "[$ISSUE_C]" --argjson multi "$OPENSSL_MULTI" \
  --argjson ocsp_target "$OCSP_TARGET" --argjson issue_target "$ISSUE_TARGET" \
  --argjson serve_errors "$SERVE_ERRORS" --slurpfile versions "$W/versions.json" --slurpfile runs "$W/runs.json" \
  --argjson ecdsa_sign "$ECDSA_SIGN" --argjson ecdsa_verify "$ECDSA_VERIFY" '
  $runs[0] as $runs
  | [{workload: "OCSP POST", peer: "openssl ocsp -multi \($multi)", peer_run: "ocsp-post-openssl", devid_run: "ocsp-post-devid", target: $ocsp_target},
     {workload: "OCSP POST", peer: "cfssl ocspserve", peer_run: "ocsp-post-cfssl", devid_run: "ocsp-post-devid", target: $ocsp_target},
     {workload: "OCSP GET", peer: "openssl ocsp -multi \($multi)", peer_run: "ocsp-get-openssl", devid_run: "ocsp-get-devid", target: $ocsp_target},
     {workload: "OCSP GET", peer: "cfssl ocspserve", peer_run: "ocsp-get-cfssl", devid_run: "ocsp-get-devid", target: $ocsp_target},
     {workload: "issuance: devid x509 IDevID", peer: "cfssl sign API", peer_run: "issue-cfssl", devid_run: "issue-devid-x509", target: $issue_target},
     {workload: "issuance: devid token", peer: "cfssl sign API", peer_run: "issue-cfssl", devid_run: "issue-devid-token", target: $issue_target}]
  | map(($runs[.peer_run].per_second // 0) as $p | ($runs[.devid_run].per_second // 0) as $d
        | . + {ratio: (if $p > 0 and $d > 0 then ($d / $p * 100 | round / 100) else null end)}
        | . + {result: (if .ratio == null then "n/a" elif .ratio >= .target then "PASS" else "MISS" end)}) as $rows
  | {date: $date, nproc: $nproc, kernel: $kernel, duration: $dur, versions: $versions[0],
     settings: {wrk: "-t\($t) -c\($c) --latency", openssl_multi: $multi, issue_load_concurrency: $ic,
                simulate_concurrency: $conc},
     runs: $runs, ratios: $rows, devid_log_errors: $serve_errors,
     ecdsa_p256: (if $ecdsa_verify > 0 then
       {sign_per_s: $ecdsa_sign, verify_per_s: $ecdsa_verify,
        sign_us: (1e6 / $ecdsa_sign | round), verify_us: (1e6 / $ecdsa_verify | round),
        floor_us: {"issue-cfssl": (1e6 / $ecdsa_sign + 2e6 / $ecdsa_verify | round),
                   "issue-devid-token": (2e6 / $ecdsa_sign + 2e6 / $ecdsa_verify | round),
                   "issue-devid-x509": (2e6 / $ecdsa_sign + 4e6 / $ecdsa_verify | round)}}
       else null end),
     verdict: (if any($rows[]; .result == "MISS") then "MISS" elif any($rows[]; .result == "PASS") then "PASS" else "n/a" end)}
' >"$W/final.json"

jq -r '
  def c: (floor | tostring) as $s | [$s | explode | reverse | _nwise(3) | reverse | implode] | reverse | join(",");
  def fig: if . == null then "n/a" elif .na then "n/a (\(.na))"
    else "\(.per_second | c)/s (\(.p50_ms) / \(.p99_ms))\(if .concurrency then " at c=\(.concurrency)" else "" end)\(if .errors > 0 then ", \(.errors) errors" else "" end)" end;
  def other: if .cpu == null then "–" else (.cpu.other_cores | tostring) end;
  . as $f
  | "## devid and its peers, side by side (`bench/peers.sh \($f.duration)`)",
    "",
    "\($f.date), \($f.nproc) cores, Linux \($f.kernel). Figures: per second (p50 / p99 ms). Ratio: devid ÷ peer.",
    "Other: cores that other work on the machine used during the peer / devid run (compare runs only when near 0).",
    "",
    "| workload | peer | peer figure | devid figure | devid ÷ peer | target | result | other |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ($f.ratios[] | . as $r | $f.runs[$r.peer_run] as $p | $f.runs[$r.devid_run] as $d
      | "| \($r.workload) | \($r.peer) | \($p | fig) | \($d | fig) | \(if $r.ratio == null then "n/a" else "\($r.ratio)×" end) | ≥ \($r.target)× | \($r.result) | \($p | other) / \($d | other) |"),
    "",
    "Overall: **\($f.verdict)**. OCSP: wrk \($f.settings.wrk), one fixed POST/GET request for a good certificate (no nonce), the same command for each responder. Issuance: cfssl through issue_load.py at concurrency \($f.settings.issue_load_concurrency | join(", ")); devid through devid-agent simulate at concurrency \($f.settings.simulate_concurrency | join(", ")), every certificate committed to PostgreSQL; each side'"'"'s best rate is compared (x509: \($f.runs["issue-devid-x509"].devices) devices in \($f.runs["issue-devid-x509"].seconds) s; token: \($f.runs["issue-devid-token"].devices) devices in \($f.runs["issue-devid-token"].seconds) s).",
    "",
    "Issuance by concurrency (per second, p99 ms): \(["cfssl", "devid-x509", "devid-token"] | map(. as $who | "\($who) " + ($f.runs | to_entries | map(select(.key | startswith("issue-\($who)-c"))) | sort_by(.key | sub(".*-c"; "") | tonumber) | map("c=\(.key | sub(".*-c"; "")) \(.value.per_second | c)/s (\(.value.p99_ms))") | join(", "))) | join("; ")).",
    "",
    "CPU per operation, server + PostgreSQL (µs; steadier than the rates on a busy machine; for devid issuance, the enrollment phase alone, with all of PostgreSQL including its WAL writer): \($f.runs | to_entries | map(select(.value.cpu.server_us_per_op != null) | "\(.key) \(.value.cpu.server_us_per_op + .value.cpu.pg_us_per_op)") | join(", ")).",
    "",
    (if $f.ecdsa_p256 == null then "ECDSA P-256: not measured (openssl speed gave no figure)." else
     "ECDSA P-256 on one core of this machine (openssl speed): \($f.ecdsa_p256.sign_us) µs a signature, \($f.ecdsa_p256.verify_us) µs a verification. The signatures and verifications alone, per certificate: cfssl \($f.ecdsa_p256.floor_us["issue-cfssl"]) µs (1 signature, 2 verifications: the CSR and the check Go makes after signing), devid token \($f.ecdsa_p256.floor_us["issue-devid-token"]) µs (2 and 2: the certificate and its OCSP answer; the CSR and the check after signing), devid x509 \($f.ecdsa_p256.floor_us["issue-devid-x509"]) µs (2 and 4: also the IDevID chain and the possession signature)." end),
    "",
    "Versions: \($f.versions | to_entries | map("\(.key): \(.value)") | join("; "))."
' "$W/final.json"
echo
jq -c . "$W/final.json"
