#!/usr/bin/env bash
# Schema-driven fuzzing of the HTTP API with Schemathesis (PyPI), against the committed
# OpenAPI 3.1 document as the server serves it at /openapi.json.
#
#  1. builds the binary (debug; reuses an existing build);
#  2. starts `devid serve` on SQLite in a fresh temporary data directory, on a free port;
#  3. creates an admin credential, gets a bearer token, registers one device;
#  4. runs `schemathesis run`, deterministic and with a bounded budget, checking that no
#     response is a 5xx, and that status codes, content types and bodies match the document;
#  5. stops the server; exits non-zero when Schemathesis found a failure.
#
# Schemathesis lives in the virtualenv target/pyvenv (made by tests/run.sh, or here).
# By default the run is deterministic (Schemathesis' --generation-deterministic: the same
# cases in the same order every time, and the same output, with ports, temporary paths,
# durations and random test-case ids masked). To explore further, DEVID_FUZZ_SEED=N makes a
# seeded random run instead (reproducible with the same N); DEVID_FUZZ_MAX_EXAMPLES sets the
# budget per operation and phase (default 50). Extra arguments go to `schemathesis run`.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "tests/fuzz.sh: $*" >&2; exit 1; }
say() { echo "tests/fuzz.sh: $*"; }

seed=${DEVID_FUZZ_SEED:-}
max_examples=${DEVID_FUZZ_MAX_EXAMPLES:-50}

# --- Schemathesis ------------------------------------------------------------------------
venv=target/pyvenv
st_spec='schemathesis>=4.32,<5'
if [ ! -x "$venv/bin/schemathesis" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" >/dev/null 2>&1 \
    || die "python3 cannot make a virtualenv: apt-get install -y python3-venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "$st_spec" \
    || die "could not install $st_spec from PyPI"
fi
st="$venv/bin/schemathesis"

# --- the server --------------------------------------------------------------------------
cargo build -q -p devid
bin=target/debug/devid
work=$(mktemp -d -t devid-fuzz.XXXXXX)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

export DEVID_LOG__LEVEL=warn
# The renewal listener on a free port; rate limits off (a fuzz run is one client sending as
# fast as it can; tests/ratelimit.rs covers the limits).
export DEVID_TLS__LISTEN=127.0.0.1:0 DEVID_LIMITS__PER_SOURCE=0 DEVID_LIMITS__PER_DEVICE=0 DEVID_LIMITS__PER_CREDENTIAL=0
# Port 0: the kernel picks a free port, and the server prints the one it bound.
"$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/server.log" 2>&1 &
server_pid=$!
base=""
for _ in $(seq 1 300); do
  base=$(sed -n 's#^listening on \(http://[0-9.:]*\).*#\1#p' "$work/server.log" | head -n1)
  [ -n "$base" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; die "the server exited before listening"; }
  sleep 0.1
done
[ -n "$base" ] || { cat "$work/server.log" >&2; die "the server did not print 'listening on' within 30 s"; }
say "server started (SQLite, fresh data directory)"

# --- an admin token and one device ---------------------------------------------------------
cred=$("$bin" credential create --role admin --json --data-dir "$work/data")
json_get() { "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
client_id=$(json_get client_id <<<"$cred")
client_secret=$(json_get client_secret <<<"$cred")
token=$(curl -sf -u "$client_id:$client_secret" -d grant_type=client_credentials "$base/v1/auth/token" | json_get access_token) \
  || die "could not get an access token"
curl -sf -o /dev/null -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  --data '{"id":"fuzz-device-0001"}' "$base/v1/devices" || die "could not register a device"

# --- Schemathesis ------------------------------------------------------------------------
# Hooks for the binary media types: the document describes DER bodies (utoipa's Vec<u8>) as
# an array of integers >= 0, and Schemathesis has no (de)serializer for these media types.
#  - POST /ocsp (application/ocsp-request): without a serializer the operation cannot be
#    tested at all. Send a generated integer array as those bytes (mod 256), and anything else
#    (negative mode) as its JSON text: the responder must answer every body.
#  - application/ocsp-response, pkix-cert, pkix-crl: read the DER body as that integer array,
#    so that the response schema is checked rather than skipped.
# And one guard: Schemathesis learns identifiers from responses and from the bearer JWT (its
# `sub` is our client id), so it calls DELETE /v1/credentials/{our client id}, which revokes
# the run's own credential and token; every protected operation after that only gets 401s and
# is silently not tested. That one request is sent with another (unknown) client id instead.
cat >"$work/hooks.py" <<'PY'
import json
import os
import schemathesis

@schemathesis.serializer("application/ocsp-request")
def ocsp_request(ctx, value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return bytes(v % 256 for v in value)
    return json.dumps(value).encode()

@schemathesis.deserializer("application/ocsp-response", "application/pkix-cert", "application/pkix-crl")
def der(ctx, response):
    return list(response.content)

OWN_CLIENT_ID = os.environ["DEVID_FUZZ_CLIENT_ID"]

@schemathesis.hook
def before_call(ctx, case, **kwargs):
    params = case.path_parameters or {}
    if case.method.upper() == "DELETE" and params.get("client_id") == OWN_CLIENT_ID:
        params["client_id"] = OWN_CLIENT_ID + "-not-this-one"
PY
export SCHEMATHESIS_HOOKS="$work/hooks.py" DEVID_FUZZ_CLIENT_ID="$client_id"
# No crash cache: by default Schemathesis keeps failures in ./.schemathesis/ and replays them
# first in the next run, so a run's output would depend on the runs before it.
printf '[cache]\nenabled = false\n' >"$work/schemathesis.toml"

"$st" --version
# No 5xx; every status, content type and body as documented for its operation.
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
if [ -n "$seed" ]; then generation=(--seed "$seed"); else generation=(--generation-deterministic); fi
# POST /v1/auth/token and /v1/auth/revoke document their form body as a bare string, which
# cannot be form-encoded, so Hypothesis discards most of what it draws for them; with some
# seeds its filter_too_much health check then aborts the operation with an error that says
# nothing about the server. Suppress that health check (it is not one of the checks above).
generation+=(--suppress-health-check filter_too_much)
say "schemathesis run http://127.0.0.1:PORT/openapi.json --header 'Authorization: Bearer ***' --checks $checks --max-examples $max_examples ${generation[*]} --workers 1 --no-color${*:+ $*}"
# A hard bound on the whole run (it takes about a minute): a hang fails instead of stalling.
set +e
timeout "${DEVID_FUZZ_TIMEOUT:-170}" "$st" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$checks" \
  --max-examples "$max_examples" \
  "${generation[@]}" \
  --workers 1 \
  --no-color \
  "$@" 2>&1 | sed -u -E "s#${base//./\\.}#http://127.0.0.1:PORT#g; s#$work#TMP#g; s# ?\(?in [0-9.]+s\)?##g; /^ +st replay /d; s#(Test Case ID: )[A-Za-z0-9]+#\1-#"
rc=${PIPESTATUS[0]}
set -e
if ! kill -0 "$server_pid" 2>/dev/null; then
  say "FAILED: the server died during the run; its log:"; cat "$work/server.log"; server_pid=""
  [ "$rc" != 0 ] || rc=1
fi
# The run's token must still work at the end: otherwise protected operations were not tested.
if ! curl -sf -o /dev/null -H "Authorization: Bearer $token" "$base/v1/devices?limit=1"; then
  say "FAILED: the run's admin token stopped working during the run (protected operations got only 401s)"
  [ "$rc" != 0 ] || rc=1
fi
case $rc in
  0) say "passed: Schemathesis found no failure" ;;
  124) say "FAILED: Schemathesis did not finish within ${DEVID_FUZZ_TIMEOUT:-170} s" ;;
  *) say "FAILED: Schemathesis exited with $rc (see FAILURES above)" ;;
esac
exit "$rc"
