#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (PostgreSQL, Chromium and
# its driver, the npm front-end packages, the real MNIST / Fashion-MNIST data), starts PostgreSQL,
# then runs formatting, lint and every test of the workspace against SQLite and Postgres.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

export CRT_DATA_DIR="${CRT_DATA_DIR:-$root/target/crt-data}"
export CARGO_TERM_COLOR=never

# CRT_TEST_ONE_SHOT=1 (set by .ci/run): a throw-away clone, so keep the disk peak low: no incremental
# build state, and the debug build is deleted once the tests have run, before the CUDA stage needs
# its own ~3 GB (wheels + release build). A developer's run keeps both.
one_shot=${CRT_TEST_ONE_SHOT:-0}
if [ "$one_shot" = 1 ]; then
  export CARGO_INCREMENTAL=0
fi
disk() { echo "   disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free ($1)"; }
disk "start"

need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

echo "== front-end packages (npm ci)"
scripts/assets.sh

echo "== building"
cargo build --workspace --all-targets

echo "== datasets"
target/debug/crt-trainer data fetch mnist --data-dir "$CRT_DATA_DIR"
target/debug/crt-trainer data fetch fashion-mnist --data-dir "$CRT_DATA_DIR"

echo "== PostgreSQL"
eval "$(scripts/ci-postgres.sh)"
export CRT_TEST_POSTGRES_URL
echo "Postgres for tests: ${CRT_TEST_POSTGRES_URL%%@*}@..."

echo "== format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests"
cargo test --workspace -- --test-threads 2
disk "after the tests"

if [ "$one_shot" = 1 ]; then
  rm -rf target/debug
  disk "debug build deleted"
fi

# The CUDA build, on this GPU-less machine: compiles and links crt-trainer with `--features cuda`
# against NVIDIA's pinned CUDA 13.0 wheels and smoke-tests it with a stub driver (scripts/cuda-build.sh).
echo "== CUDA build"
scripts/cuda-build.sh
disk "after the CUDA build"
