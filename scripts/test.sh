#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need (PostgreSQL, Chromium and
# its driver, the npm front-end packages, the real MNIST / Fashion-MNIST data, a single-node Slurm),
# builds everything once, starts PostgreSQL and Slurm, then runs formatting, lint, the trainer's
# tests, and the server's tests twice: against SQLite (CRT_TEST_DB=sqlite) and against Postgres
# (CRT_TEST_DB=postgres). Prints each stage's wall time and a summary at the end.
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

# Stages: `stage NAME` ends the current stage (printing its wall time) and starts the next; the
# summary of all stage times is printed on exit, also when a stage fails.
stage_names=()
stage_secs=()
stage_cur=""
stage_t0=0
stage_end() {
  if [ -n "$stage_cur" ]; then
    local t=$((SECONDS - stage_t0))
    echo "   $stage_cur: $t s"
    stage_names+=("$stage_cur")
    stage_secs+=("$t")
    stage_cur=""
  fi
}
stage() {
  stage_end
  stage_cur=$1
  stage_t0=$SECONDS
  echo "== $1"
}
stage_summary() {
  local rc=$? i
  if [ -n "$stage_cur" ]; then
    echo "   $stage_cur: FAILED after $((SECONDS - stage_t0)) s"
    stage_names+=("$stage_cur (failed)")
    stage_secs+=("$((SECONDS - stage_t0))")
    stage_cur=""
  fi
  echo "== stage times"
  for i in "${!stage_names[@]}"; do
    printf '   %-32s %5d s\n' "${stage_names[$i]}" "${stage_secs[$i]}"
  done
  printf '   %-32s %5d s\n' "total" "$SECONDS"
  return "$rc"
}
trap stage_summary EXIT

need_apt=()
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  stage "installing ${need_apt[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}"
fi

stage "front-end packages (npm ci)"
scripts/assets.sh

stage "building"
cargo build --workspace --all-targets
cargo test --workspace --no-run

stage "datasets"
target/debug/crt-trainer data fetch mnist --data-dir "$CRT_DATA_DIR"
target/debug/crt-trainer data fetch fashion-mnist --data-dir "$CRT_DATA_DIR"

# One venv of pinned Python test tools: the real MLflow client (server tests) and schemathesis.
stage "Python test tools (venv)"
scripts/py-venv.sh

stage "PostgreSQL"
eval "$(scripts/ci-postgres.sh)"
# Not exported: only the Postgres pass of the server tests gets it (see below).
pg_url=$CRT_TEST_POSTGRES_URL
unset CRT_TEST_POSTGRES_URL
echo "Postgres for tests: ${pg_url%%@*}@..."

stage "Slurm"
eval "$(scripts/ci-slurm.sh)"
echo "Slurm for tests: SLURM_CONF=$SLURM_CONF"

stage "format and lint"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings

stage "trainer tests"
cargo test --workspace --exclude crt-server -- --test-threads 2

stage "server tests (SQLite)"
CRT_TEST_DB=sqlite cargo test -p crt-server -- --test-threads 2

stage "server tests (Postgres)"
CRT_TEST_DB=postgres CRT_TEST_POSTGRES_URL=$pg_url cargo test -p crt-server -- --test-threads 2

# schemathesis against /api/openapi.json (scripts/fuzz.sh): no 5xx, every response as documented.
stage "API fuzz (schemathesis)"
scripts/fuzz.sh
stage_end
disk "after the tests"

if [ "$one_shot" = 1 ]; then
  rm -rf target/debug
  disk "debug build deleted"
fi

# The CUDA build, on this GPU-less machine: compiles and links crt-trainer with `--features cuda`
# against NVIDIA's pinned CUDA 13.0 wheels and smoke-tests it with a stub driver (scripts/cuda-build.sh).
stage "CUDA build"
scripts/cuda-build.sh
stage_end
disk "after the CUDA build"
