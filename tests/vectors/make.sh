#!/usr/bin/env bash
# Regenerates the committed test vectors. Run from this folder.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# An RSA-1024 CSR: a key size devid must refuse (rcgen cannot make RSA keys).
openssl req -new -newkey rsa:1024 -nodes -keyout "$tmp/k.pem" -subj /CN=weak -out rsa1024.csr.pem 2>/dev/null
