#!/usr/bin/env bash
# The 10-million-certificate store (issue #6, "Scale"): seed it, then time `devid serve`
# from exec to ready.
#
#   bench/scale.sh [N=10000000]
#
# 1. A fresh PostgreSQL database and data directory; `devid ca init` (software keys).
# 2. `devid seed --certificates N --json` (real certificates of the issuing CA, 5 % revoked
#    and 20 % expired by default; COPY in one transaction, then VACUUM ANALYZE and the CRL
#    rebuilt): its wall time, peak RSS and CPU time, its own figures (load, vacuum/analyze,
#    CRL), and the database size.
# 3. RUNS times: `devid serve` on a free port, timed from exec until GET /readyz answers
#    200 (the store answers; the CAs, the OCSP responder, the CRLs and the renewal
#    listener's certificate are loaded before the port opens); its RSS then; and, on the
#    first run, one OCSP answer for a seeded revoked certificate and one for a seeded good
#    one (neither is cached: answered from the store and signed), checked with openssl.
# 4. One summary line on stdout; progress on stderr.
#
# Targets (issue #6): ready in ≤ 5 s on the N-certificate store.
#
# Environment:
#   RUNS=3                    server starts
#   SEED_ARGS=                more `devid seed` flags (e.g. "--devices 1000000 --jobs 2")
#   DEVID_BIN=                the devid binary (default: cargo build --release -p devid)
#   DEVID_BENCH_DATABASE_URL= an existing, EMPTY PostgreSQL database to use (kept). Default:
#                             a fresh devid_bench_<random> on $DEVID_BENCH_PG_ADMIN_URL
#                             (postgres://postgres@127.0.0.1:5432/postgres), dropped at exit.
#   KEEP=1                    keep the work directory (logs, certificates)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

N=${1:-10000000}
RUNS=${RUNS:-3}
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive number"

need psql postgresql-client
need jq jq
need curl curl
need openssl openssl
need python3 python3
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install -y time"

DEVID=$(devid_bin)
bench_workdir scale
db_create
D=(--data-dir "$W/data" --database-url "$DB_URL")
q() { psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 -c "$1"; }
now_s() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }
export DEVID_LOG__LEVEL=warn DEVID_TLS__LISTEN=127.0.0.1:0

say "devid: $DEVID ($("$DEVID" --version)); database ${DB_URL##*/}"
say "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); $(date -u +%Y-%m-%dT%H:%M:%SZ)"

# --- the CA and the seed ---
"$DEVID" ca init --json "${D[@]}" >"$W/ca.json" 2>>"$W/cli.log" || { cat "$W/cli.log" >&2; die "ca init failed"; }
jq -r .root_pem "$W/ca.json" >"$W/root.pem"
jq -r .issuing_pem "$W/ca.json" >"$W/issuing.pem"
say "seeding $N certificates ..."
read -r -a seed_args <<<"${SEED_ARGS:-}"
t0=$(now_s)
/usr/bin/time -f '%M %U %S' -o "$W/seed.time" \
  "$DEVID" seed --certificates "$N" "${seed_args[@]}" --json "${D[@]}" >"$W/seed.json" 2>"$W/seed.log" \
  || { cat "$W/seed.log" >&2; die "devid seed failed"; }
t1=$(now_s)
SEED_WALL=$(secs "$t0" "$t1")
read -r SEED_RSS_KIB SEED_USER SEED_SYS <"$W/seed.time"
jq -c . "$W/seed.json" >&2
say "devid seed: peak RSS $((SEED_RSS_KIB / 1024)) MiB, CPU ${SEED_USER} s user + ${SEED_SYS} s system"
DB_BYTES=$(q "SELECT pg_database_size(current_database())")
say "seeded in $SEED_WALL s; database $(q "SELECT pg_size_pretty(pg_database_size(current_database()))")"
q "SELECT relname, pg_size_pretty(pg_total_relation_size(c.oid)) AS total, pg_size_pretty(pg_relation_size(c.oid)) AS heap
   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY pg_total_relation_size(c.oid) DESC LIMIT 6" \
  | sed 's/^/  table /' >&2

# One seeded certificate of each status, unexpired, for the OCSP check: the first after the
# serials of 45 days ago (an index range scan; a serial's first 6 octets are a time in
# milliseconds, and the seed spreads them over its 90-day history and one validity).
MID_SERIAL=$(printf '%012x' $((($(date +%s) - 45 * 86400) * 1000)))
pick() {
  q "SELECT encode(cert_der, 'base64') FROM certificates WHERE serial > '$MID_SERIAL' AND status = '$1' \
     AND not_after > $(date +%s) + 600 ORDER BY serial LIMIT 1" | base64 -d | openssl x509 -inform DER -out "$W/$2.pem" \
    || die "no seeded $1 certificate to check OCSP with"
}
pick revoked revoked
pick issued good

# --- serve: exec → /readyz ---
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
readies=()
rss_kib=
for r in $(seq "$RUNS"); do
  port=$(free_port)
  t0=$(now_s)
  "$DEVID" serve --listen "127.0.0.1:$port" "${D[@]}" >"$W/serve.$r.out" 2>"$W/serve.$r.log" &
  SERVER_PID=$!
  until curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz"; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$W/serve.$r.out" "$W/serve.$r.log" >&2; die "devid serve exited"; }
    [ "$(secs "$t0" "$(now_s)" | cut -d. -f1)" -lt 120 ] || die "devid serve not ready after 120 s"
    sleep 0.02
  done
  t1=$(now_s)
  readies+=("$(secs "$t0" "$t1")")
  rss_kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$SERVER_PID/status")
  say "serve run $r: ready in ${readies[-1]} s; RSS $((rss_kib / 1024)) MiB"
  if [ "$r" = 1 ]; then
    for f in revoked good; do
      out=$(openssl ocsp -issuer "$W/issuing.pem" -cert "$W/$f.pem" -url "http://127.0.0.1:$port/ocsp" \
        -CAfile "$W/root.pem" -verify_other "$W/issuing.pem" -no_nonce -timeout 20 2>&1) || die "openssl ocsp: $out"
      if ! grep -q "Response verify OK" <<<"$out" || ! grep -q "$f.pem: $f" <<<"$out"; then
        die "OCSP for the seeded $f certificate: $out"
      fi
    done
    say "  OCSP: a seeded revoked certificate is revoked, a seeded good one good (verified)"
  fi
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
done

# --- summary ---
max_ready=$(printf '%s\n' "${readies[@]}" | sort -g | tail -n1)
verdict=$(awk -v m="$max_ready" 'BEGIN {print (m <= 5.0) ? "PASS" : "MISS"}')
jq -r --arg n "$N" --arg wall "$SEED_WALL" --arg db "$DB_BYTES" --arg ready "$(IFS=/; echo "${readies[*]}")" \
  --arg rss "$rss_kib" --arg verdict "$verdict" --arg seed_rss "$SEED_RSS_KIB" '
  "scale N=\($n): seed \($wall) s (load \(.load_seconds) s, \(.certificates_per_second) certs/s; vacuum+analyze \(.analyze_seconds) s; CRL \(.crl_seconds) s; peak RSS \(($seed_rss | tonumber) / 1024 | round) MiB) revoked=\(.revoked) expired=\(.expired) devices=\(.devices) db=\(($db | tonumber) / 1073741824 * 10 | round / 10) GiB; serve ready \($ready) s (target <= 5 s: \($verdict)); serve RSS \(($rss | tonumber) / 1024 | round) MiB"
' "$W/seed.json"
