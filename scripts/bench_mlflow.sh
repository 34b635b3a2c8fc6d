#!/usr/bin/env bash
# CRT Lab's MLflow-compatible API beside a real MLflow tracking server (not CI): builds crt-server
# in release, makes target/bench-mlflow-venv with the full `mlflow` package from PyPI (once; the
# server, not only the client the tests use) and runs scripts/bench_mlflow.py, which prints the
# table in docs/benchmarks.md. Extra arguments go to bench_mlflow.py (e.g. `--only crt`).
set -euo pipefail
cd "$(dirname "$0")/.."
MLFLOW_VERSION=3.17.2
VENV=target/bench-mlflow-venv
if [ ! -x "$VENV/bin/mlflow" ] || ! "$VENV/bin/pip" show mlflow 2>/dev/null | grep -qx "Version: $MLFLOW_VERSION"; then
  echo "bench_mlflow: installing mlflow==$MLFLOW_VERSION into $VENV (one time)" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mlflow==$MLFLOW_VERSION"
fi
cargo build --release -p crt-server >&2
exec "$VENV/bin/python" scripts/bench_mlflow.py --crt-server "${CARGO_TARGET_DIR:-target}/release/crt-server" \
  --mlflow "$VENV/bin/mlflow" "$@"
