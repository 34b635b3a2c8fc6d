#!/usr/bin/env bash
# Speed of the trainer beside PyTorch: builds crt-trainer in release, makes .venv-bench with
# PyTorch from PyPI (once), and runs `crt-trainer bench` (training step and certification batch
# of LeNet and ResNet-20, items/s and ours/PyTorch). Extra arguments go to `crt-trainer bench`:
#
#   scripts/bench.sh                              # the default table (2 threads, 10 runs)
#   scripts/bench.sh --runs 20 --models lenet      # any `crt-trainer bench --help` flag
#   scripts/bench.sh --rounds 3                    # 3 alternating ours/PyTorch rounds per row (docs/benchmarks.md)
#   BENCH_NICE=-19 scripts/bench.sh                # run at high priority on a shared machine (root)
#
# PyTorch from PyPI on Linux x86_64 is the CUDA build (measured with torch 2.15: the torch wheel
# alone is 539 MB; installed, 5.4 GB = 1.2 GB torch + 3.0 GB nvidia-* CUDA libraries + 1 GB triton;
# 2.5 minutes here). The CPU-only wheels live on download.pytorch.org, not PyPI, and installing
# torch with --no-deps does not help: `import torch` preloads the nvidia-* libraries and fails.
# The comparison script is ../shared/bench/torch_reference.py (see `crt-trainer bench --torch-script`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-bench
PYTHON=${BENCH_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "bench: installing PyTorch into $VENV (one time, ~5 GB)" >&2
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  "$VENV/bin/pip" install --quiet torch
fi

cargo build --release -p crt-trainer >&2
BIN=${CARGO_TARGET_DIR:-target}/release/crt-trainer

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "# $(rustc --version); torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" >&2
exec nice -n "${BENCH_NICE:-0}" "$BIN" bench --torch "$VENV/bin/python" "$@"
