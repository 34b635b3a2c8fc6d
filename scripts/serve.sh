#!/usr/bin/env bash
# The main job: builds the server and the trainer (release), installs the dashboard's front-end
# packages, and serves http://127.0.0.1:8080 with an embedded SQLite database in ./crt-data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/assets.sh
cargo build --release -p crt-trainer -p crt-server
# GPU runs use the CUDA trainer when one was built (scripts/cuda-build.sh) and this machine has GPUs.
extra=()
if [ -x target-cuda/release/crt-trainer ] && command -v nvidia-smi >/dev/null 2>&1; then
  extra+=(--trainer-cuda-bin target-cuda/release/crt-trainer)
fi
exec target/release/crt-server "${extra[@]}" "$@"
