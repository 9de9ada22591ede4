#!/usr/bin/env bash
# CRL build at scale: `devid crl build` over N revoked certificates in PostgreSQL.
#
# usage: bench/crl.sh [N=1000000]
#
# 1. A fresh database and data directory; `devid ca init` (software keys).
# 2. Baseline: `devid crl build` with no revoked certificate (RUNS times): the process's
#    peak RSS without entries.
# 3. Seeds N revoked, unexpired certificates of the issuing CA with SQL (generate_series):
#    one row each in devices, certificates (status 'revoked', dummy DER) and revocations;
#    then ANALYZE.
# 4. Times the CRL query alone (psql \copy to /dev/null), then runs `devid crl build --json`
#    RUNS times under /usr/bin/time -v: build_ms (as devid reports it), wall time, CPU, peak
#    RSS, and peak RSS minus the baseline as a multiple of the CRL's size.
# 5. Checks the stored CRL with openssl: signature against the CA chain, N entries.
#
# Environment:
#   RUNS=3                    builds per measurement
#   DEVID_BIN=                the devid binary (default: cargo build --release -p devid)
#   DEVID_BENCH_DATABASE_URL= an existing, EMPTY PostgreSQL database to use (kept; N rows
#                             are added to it). Default: a fresh devid_bench_<random> on
#                             $DEVID_BENCH_PG_ADMIN_URL (postgres://postgres@127.0.0.1:5432/postgres),
#                             dropped at exit.
#   KEEP=1                    keep the work directory (CRL, chain, logs) and the database
set -euo pipefail
. "$(dirname "$0")/lib.sh"

N=${1:-1000000}
RUNS=${RUNS:-3}
[[ "$N" =~ ^[0-9]+$ ]] || die "N must be a number"

need openssl openssl
need jq jq
need psql postgresql-client
[ -x /usr/bin/time ] || die "/usr/bin/time is missing: apt-get install -y time"

DEVID=$(devid_bin)
W=$(mktemp -d /tmp/devid-bench-crl.XXXXXX)
cleanup() {
  if [ -n "${KEEP:-}" ]; then
    say "kept: work directory $W${DB_CREATED:+, database $DB_URL}"
  else
    db_drop
    rm -rf "$W"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

db_create
D=(--data-dir "$W/data" --database-url "$DB_URL")
q() { psql "$DB_URL" -qAtX -v ON_ERROR_STOP=1 "$@"; }

# --- the CA ---
"$DEVID" ca init --json "${D[@]}" >"$W/ca.json" 2>>"$W/cli.log" || { cat "$W/cli.log" >&2; die "ca init failed"; }
ISSUER=$(jq -r .issuing_id "$W/ca.json")
{ jq -r .issuing_pem "$W/ca.json"; jq -r .root_pem "$W/ca.json"; } >"$W/chain.pem"
say "devid: $DEVID ($("$DEVID" --version)); issuing CA $ISSUER; database ${DB_URL##*/}"
say "$(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"

# build LABEL: one `devid crl build --json` under /usr/bin/time -v; prints
# "build_ms wall_s user_s sys_s rss_kib bytes" and appends a readable line to $W/builds.
build() {
  local label=$1 out=$W/build.json tv=$W/time.txt
  /usr/bin/time -v -o "$tv" "$DEVID" crl build --json "${D[@]}" >"$out" 2>>"$W/cli.log" \
    || { cat "$W/cli.log" >&2; die "crl build failed"; }
  local row
  row=$(jq -r --arg i "$ISSUER" '.[] | select(.issuer == $i) | "\(.build_ms) \(.bytes) \(.crl_number)"' "$out")
  [ -n "$row" ] || die "crl build printed nothing for $ISSUER: $(cat "$out")"
  read -r ms bytes number <<<"$row"
  local wall user sys rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$tv")
  user=$(awk -F': ' '/User time/ {print $2}' "$tv")
  sys=$(awk -F': ' '/System time/ {print $2}' "$tv")
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
  printf '%s %s %s %s %s %s\n' "$ms" "$wall" "$user" "$sys" "$rss" "$bytes"
  printf '%s crl_number=%s\n' "$label" "$number" >>"$W/builds"
}

# --- baseline: no entries ---
base_rss=
for r in $(seq "$RUNS"); do
  res=$(build "N=0 run $r")
  read -r ms wall user sys rss bytes <<<"$res"
  printf 'crl build N=0        run %d: build_ms=%-6s wall=%6.2fs user=%5.2fs sys=%5.2fs peak_rss=%7.1f MiB  crl=%d B\n' \
    "$r" "$ms" "$wall" "$user" "$sys" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$bytes"
  if [ -z "$base_rss" ] || [ "$rss" -lt "$base_rss" ]; then base_rss=$rss; fi
done

# --- seed N revoked certificates ---
NOW=$(date +%s)
say "seeding $N revoked certificates ..."
t0=$(date +%s.%N)
q -v n="$N" -v now="$NOW" -v issuer="$ISSUER" <<'SQL'
SET synchronous_commit = off;
BEGIN;
-- One device per certificate; serials are 20 octets: 7f + 38 hex digits of SHA-256(i),
-- positive and unique.
INSERT INTO devices (id, status, token_hash, token_used_at, created_at, updated_at)
SELECT 'bench-crl-' || i, 'enrolled', NULL, :now - 86400, :now - 86400, :now - 86400
FROM generate_series(1, :n) AS i;
INSERT INTO certificates (serial, issuer_id, device_id, status, not_before, not_after,
                          csr_sha256, tbs_der, cert_der, created_at, updated_at)
SELECT '7f' || substr(encode(sha256(i::text::bytea), 'hex'), 1, 38), :'issuer', 'bench-crl-' || i,
       'revoked', :now - 86400, :now + 30 * 86400,
       '\x00'::bytea, '\x3000'::bytea, '\x3000'::bytea, :now - 86400, :now
FROM generate_series(1, :n) AS i;
-- Reasons: keyCompromise (1), superseded (4), cessationOfOperation (5), unspecified (0, no
-- reasonCode entry extension); revocation times spread over the last day.
INSERT INTO revocations (serial, reason, revoked_at, issuer_id, not_after)
SELECT '7f' || substr(encode(sha256(i::text::bytea), 'hex'), 1, 38), (ARRAY[1, 4, 5, 0])[1 + i % 4],
       :now - (i % 86400), :'issuer', :now + 30 * 86400
FROM generate_series(1, :n) AS i;
COMMIT;
ANALYZE devices;
ANALYZE certificates;
ANALYZE revocations;
SQL
t1=$(date +%s.%N)
say "seeded in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s: revocations of $ISSUER: $(q -c "SELECT count(*) FROM revocations WHERE issuer_id = '$ISSUER'")"

# --- the CRL query alone (what rebuild_crl streams) ---
SQLQ="SELECT serial, reason, revoked_at FROM revocations WHERE issuer_id = '$ISSUER' AND not_after > $NOW"
say "plan: $(q -c "EXPLAIN $SQLQ" | head -n1 | sed 's/  */ /g')"
for r in 1 2; do
  t0=$(date +%s.%N)
  q -c "\\copy ($SQLQ) TO '/dev/null'"
  t1=$(date +%s.%N)
  printf 'sql only (psql \\copy to /dev/null) run %d: %.0f ms\n' "$r" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print (b - a) * 1000}')"
done

# --- the builds ---
for r in $(seq "$RUNS"); do
  res=$(build "N=$N run $r")
  read -r ms wall user sys rss bytes <<<"$res"
  awk -v r="$r" -v n="$N" -v ms="$ms" -v wall="$wall" -v user="$user" -v sys="$sys" -v rss="$rss" \
      -v base="$base_rss" -v bytes="$bytes" 'BEGIN {
    printf "crl build N=%-8d run %d: build_ms=%-6s wall=%6.2fs user=%5.2fs sys=%5.2fs peak_rss=%7.1f MiB  baseline=%.1f MiB  delta=%.1f MiB = %.2f x CRL  crl=%d B (%.1f MiB)\n",
      n, r, ms, wall, user, sys, rss / 1024, base / 1024, (rss - base) / 1024, (rss - base) * 1024 / bytes, bytes, bytes / 1048576
  }'
done

# --- check the stored CRL ---
q -c "SELECT encode(der, 'base64') FROM crls WHERE issuer_id = '$ISSUER' AND shard = 0" | base64 -d >"$W/crl.der"
openssl crl -inform DER -in "$W/crl.der" -CAfile "$W/chain.pem" -noout 2>&1 | grep -q 'verify OK' \
  || die "the CRL does not verify against the CA chain ($W/crl.der)"
count=$(openssl crl -inform DER -in "$W/crl.der" -noout -text | grep -c 'Serial Number:' || true)
[ "$count" -eq "$N" ] || die "the CRL has $count entries, expected $N"
say "check: the stored CRL ($(stat -c %s "$W/crl.der") bytes) verifies against the CA chain and lists $count serials"
