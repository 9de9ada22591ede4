#!/usr/bin/env bash
# Runs every test of devid. Prepares what the tests need by itself:
#  - PostgreSQL: uses $DEVID_TEST_DATABASE_URL if set, else starts a throwaway cluster
#    (initdb in a temporary directory, on a free port) and removes it afterwards;
#  - SoftHSM2: a private token in a temporary directory;
#  - openapi-spec-validator (PyPI) in a virtualenv under target/, to validate openapi/devid.json.
# Where a system package is missing it stops with the exact install line.
# Extra arguments go to `cargo test` (e.g. `bash tests/run.sh -p devid-store`).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "tests/run.sh: $*" >&2; exit 1; }
sudo_hint() { [ "$(id -u)" = 0 ] && echo "apt-get install -y $*" || echo "sudo apt-get install -y $*"; }

command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
command -v openssl >/dev/null || die "openssl not found: $(sudo_hint openssl)"
command -v softhsm2-util >/dev/null || die "SoftHSM2 not found: $(sudo_hint softhsm2)"
module=""
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
  [ -f "$m" ] && { module=$m; break; }
done
[ -n "$module" ] || die "the SoftHSM2 PKCS#11 module (libsofthsm2.so) was not found: $(sudo_hint softhsm2)"
command -v python3 >/dev/null || die "python3 not found: $(sudo_hint python3 python3-venv)"
{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null || die "nginx not found: $(sudo_hint nginx)"
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null || die "mosquitto not found: $(sudo_hint mosquitto)"
{ command -v mosquitto_sub && command -v mosquitto_pub; } >/dev/null || die "mosquitto_sub/mosquitto_pub not found: $(sudo_hint mosquitto-clients)"
# TPM 2.0: a software TPM with EK certificates (swtpm, swtpm_setup, swtpm_localca), the
# tpm2-tools that provision it, and libtss2 for the agent's TPM support.
for t in swtpm swtpm_setup tpm2_createek; do
  command -v "$t" >/dev/null || die "$t not found: $(sudo_hint swtpm swtpm-tools tpm2-tools gnutls-bin libtss2-dev)"
done
pkg-config --exists tss2-esys 2>/dev/null || die "libtss2 (tss2-esys) not found: $(sudo_hint libtss2-dev pkg-config)"

work=$(mktemp -d -t devid-tests.XXXXXX)
pg_bin=""; pg_data=""
cleanup() {
  if [ -n "$pg_data" ] && [ -f "$pg_data/postmaster.pid" ]; then
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true
    else "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null 2>&1 || true; fi
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# --- PostgreSQL ---------------------------------------------------------------------------
if [ -z "${DEVID_TEST_DATABASE_URL:-}" ]; then
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && pg_bin=$d; done
  [ -n "$pg_bin" ] || die "no DEVID_TEST_DATABASE_URL given and no PostgreSQL server binaries to start a throwaway cluster: $(sudo_hint postgresql)"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  pg_data="$work/pg"
  mkdir -p "$pg_data"
  run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
  # initdb refuses to run as root: the cluster belongs to the postgres user then.
  [ "$(id -u)" = 0 ] && chown postgres "$work" "$pg_data"
  run_pg "$pg_bin/initdb" -D "$pg_data" -U postgres -A trust --no-sync >"$work/initdb.log" 2>&1 || { cat "$work/initdb.log"; die "initdb failed"; }
  run_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_data/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
    start >/dev/null || { cat "$pg_data/log"; die "the throwaway PostgreSQL cluster did not start"; }
  export DEVID_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "tests/run.sh: throwaway PostgreSQL cluster on 127.0.0.1:$port"
else
  echo "tests/run.sh: PostgreSQL at ${DEVID_TEST_DATABASE_URL%%\?*}" | sed -E 's#://([^:@/]+):[^@]*@#://\1:***@#'
fi

# --- SoftHSM2 -----------------------------------------------------------------------------
export SOFTHSM2_CONF="$work/softhsm2.conf"
mkdir -p "$work/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$work/tokens" > "$SOFTHSM2_CONF"
pin=$(od -An -N6 -tu4 /dev/urandom | tr -d ' \n' | cut -c1-8)
softhsm2-util --init-token --free --label devid-test --pin "$pin" --so-pin "${pin}9" >/dev/null
export DEVID_TEST_PKCS11_MODULE="$module" DEVID_TEST_PKCS11_TOKEN=devid-test DEVID_TEST_PKCS11_PIN="$pin"
echo "tests/run.sh: SoftHSM2 token devid-test ($module)"

# --- OpenAPI validator --------------------------------------------------------------------
venv=target/pyvenv
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  python3 -m venv "$venv" >/dev/null 2>&1 || die "python3 cannot make a virtualenv: $(sudo_hint python3-venv)"
  "$venv/bin/pip" install -q --disable-pip-version-check 'openapi-spec-validator>=0.7,<0.9' \
    || die "could not install openapi-spec-validator from PyPI"
fi
[ -x "$venv/bin/schemathesis" ] || "$venv/bin/pip" install -q --disable-pip-version-check 'schemathesis>=4.32,<5' \
  || die "could not install schemathesis from PyPI"
"$venv/bin/openapi-spec-validator" openapi/devid.json || die "openapi/devid.json is not a valid OpenAPI document"

# --- the tests ----------------------------------------------------------------------------
cargo test --workspace --all-features "$@"

# --- schema-driven fuzzing of the HTTP API (Schemathesis) --------------------------------
bash tests/fuzz.sh
