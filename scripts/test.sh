#!/usr/bin/env bash
# The whole test suite, from a fresh clone on Debian with Rust:
#   ./scripts/test.sh
# Installs the Debian packages the tests need when they are missing (as root, without
# starting their daemons), then runs formatting, lints, every test and a benchmark smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Packages the tests use. Idempotent: only missing ones are installed.
PACKAGES=(iproute2 nix-bin systemd systemd-container dbus iputils-arping drbd-utils glusterfs-server glusterfs-client wireguard-go wireguard-tools tcpdump iperf3 curl chromium ceph-mon ceph-mgr ceph-osd ceph-mds ceph-common ceph-fuse rbd-fuse)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "test.sh: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "test.sh: installing ${missing[*]}"
  # Keep package scripts from starting daemons (glusterd, …) in the root namespace.
  policy=/usr/sbin/policy-rc.d
  saved=""
  if [ -e "$policy" ]; then saved=$(mktemp); cp -p "$policy" "$saved"; fi
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
  restore() { if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi; }
  trap restore EXIT
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  restore; trap - EXIT
fi

# As root (as CI runs it) everything the tests need is installed above: a test that
# would skip fails instead. Set QUORATE_TEST_NO_SKIP=0 to allow skips anyway.
if [ "$(id -u)" -eq 0 ]; then export QUORATE_TEST_NO_SKIP="${QUORATE_TEST_NO_SKIP:-1}"; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo build --workspace --locked
# Namespaces or processes a killed earlier lab run left behind would disturb the tests.
./target/debug/quorate-lab cleanup
cargo test --workspace --locked
echo "== benchmark smoke run (numbers are not judged here; see docs/BENCHMARKS.md)"
cargo run --quiet --locked -p quorate-bench -- spec --nodes 50 --services 500 --drbd 50 --runs 1 > /dev/null
cargo run --quiet --locked -p quorate-bench -- cluster --formations 1 --applies 3 > /dev/null
cargo run --quiet --locked -p quorate-bench -- scheduler --nodes 100 --services 1000 --runs 1 > /dev/null
cargo run --quiet --locked -p quorate-bench -- failover --runs 1 > /dev/null 2>&1
cargo run --quiet --locked -p quorate-bench -- operate --moves 1 --services 3 > /dev/null
cargo run --quiet --locked -p quorate-bench -- api --requests 5 --streams 1 --seconds 1 > /dev/null
./target/debug/quorate-lab bench failover --runs 1 > /dev/null 2>&1
./target/debug/quorate-lab bench deploy --runs 1 --payload-mib 1 > /dev/null 2>&1
echo "== all checks passed"
