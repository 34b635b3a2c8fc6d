#!/usr/bin/env bash
# Builds crt-trainer with candle's CUDA backend on a machine WITHOUT a GPU (CI does this so a break
# in the GPU path fails the build), with NVIDIA's CUDA 13.0 compiler, headers and libraries from
# their PyPI wheels (pinned: unpinned, nvcc pulls 13.5 parts and cudarc 0.19.10 accepts <= 13.4).
#
#   scripts/cuda-build.sh               # release build -> target-cuda/release/crt-trainer (~8 min on 2 cores)
#   scripts/cuda-build.sh --cudnn       # also cuDNN (feature `cudnn`)
#   scripts/cuda-build.sh --check       # `cargo check` only: compiles everything, links nothing
#
# Environment: CUDA_COMPUTE_CAP (default 90 = H100/H200; e.g. 80 for A100, 89 for L4/RTX 40xx),
# CARGO_TARGET_DIR (default target-cuda, kept apart from the CPU build), CUDA_VENV (default .venv-cuda).
#
# Linking without a GPU: candle links cudart/cublas/curand/nvrtc and the driver API (libcuda)
# dynamically. The wheels ship only versioned libraries (libcublas.so.13) and no libcuda, so a link
# directory gets unversioned symlinks plus a stub libcuda.so (SONAME libcuda.so.1) generated from the
# driver functions cudarc declares. The stub is never shipped: at run time the GPU machine's real
# driver library is loaded. The result needs libcuda.so.1, libcudart.so.13, libcublas(Lt).so.13,
# libcurand.so.10 and libnvrtc.so.13 at start, so it cannot run on a machine without the NVIDIA
# driver: keep the CPU build for those (the server takes a CUDA trainer via --trainer-cuda-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=build
FEATURES=cuda
for arg in "$@"; do
  case "$arg" in
    --check) MODE=check ;;
    --cudnn) FEATURES=cudnn ;;
    *) echo "cuda-build: unknown argument '$arg'; expected --check and/or --cudnn" >&2; exit 2 ;;
  esac
done

VENV=${CUDA_VENV:-.venv-cuda}
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
      nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3)
CUDNN_PIN=nvidia-cudnn-cu13==9.13.0.50

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# pip is a no-op when the pinned versions are already there. No pip cache: it would hold a second
# copy of ~1 GB of wheels.
"$VENV/bin/pip" install --quiet --no-cache-dir "${PINS[@]}"
if [ "$FEATURES" = cudnn ]; then
  "$VENV/bin/pip" install --quiet --no-cache-dir --no-deps "$CUDNN_PIN"
fi

SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CU=$SITE/nvidia/cu13
[ -x "$CU/bin/nvcc" ] || { echo "cuda-build: no nvcc under $CU/bin after installing the wheels" >&2; exit 1; }
export CUDA_HOME=$CU CUDA_PATH=$CU CUDA_ROOT=$CU PATH=$CU/bin:$PATH
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
if [ "$FEATURES" = cudnn ]; then
  export CPATH=$SITE/nvidia/cudnn/include${CPATH:+:$CPATH}
fi

if [ "$MODE" = check ]; then
  cargo check --release -p crt-trainer --features "$FEATURES"
  exit 0
fi

# The link directory: unversioned names for the wheels' libraries and the libcuda stub.
LINK=$CARGO_TARGET_DIR/cuda-link
mkdir -p "$LINK"
for lib in "$CU"/lib/lib*.so.* "$SITE"/nvidia/cudnn/lib/lib*.so.*; do
  [ -e "$lib" ] || continue
  name=$(basename "$lib")
  ln -sf "$lib" "$LINK/${name%%.so.*}.so"
done
cargo fetch --quiet
CUDARC=$(cargo metadata --format-version 1 --features "$FEATURES" -q --manifest-path trainer/Cargo.toml |
  "$VENV/bin/python" -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')
# Every driver entry point cudarc declares, each returning CUDA_ERROR_STUB_LIBRARY (34).
grep -ohE '^ +fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" | sed -E 's/^ +fn (cu[A-Za-z0-9_]+)\(/\1/' |
  sort -u | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$LINK/cuda_stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK/libcuda.so" "$LINK/cuda_stub.c"

# LIBRARY_PATH only affects the linker, not cargo's fingerprints.
export LIBRARY_PATH=$LINK${LIBRARY_PATH:+:$LIBRARY_PATH}
cargo build --release -p crt-trainer --features "$FEATURES"
BIN=$CARGO_TARGET_DIR/release/crt-trainer
echo "cuda-build: $BIN ($(du -h "$BIN" | cut -f1)), features $FEATURES, compute capability $CUDA_COMPUTE_CAP" >&2
# The binary must list the CUDA libraries it will load on a GPU machine.
readelf -d "$BIN" | grep -E 'NEEDED.*(libcuda\.so\.1|libcublas)' >/dev/null ||
  { echo "cuda-build: $BIN does not link the CUDA libraries" >&2; exit 1; }

# Smoke test, still without a GPU: with the stub driver the CUDA build starts, runs CPU work on
# `--device cpu` and `auto`, and refuses `--device cuda` at once with a clear message (no panic).
ln -sf libcuda.so "$LINK/libcuda.so.1"
smoke() { LD_LIBRARY_PATH=$LINK:$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$BIN" "$@"; }
smoke --device auto bench --no-torch --models lenet --modes certify --runs 1 >/dev/null
if smoke --device cuda bench --no-torch --models lenet --modes certify --runs 1 >/dev/null 2>"$LINK/smoke.err"; then
  echo "cuda-build: --device cuda succeeded with the stub driver; expected a refusal" >&2; exit 1
fi
grep -q -- "--device cuda: no usable CUDA GPU" "$LINK/smoke.err" && ! grep -q panicked "$LINK/smoke.err" ||
  { echo "cuda-build: unexpected --device cuda error:" >&2; cat "$LINK/smoke.err" >&2; exit 1; }
echo "cuda-build: smoke test passed ($(head -c 200 "$LINK/smoke.err"))" >&2
