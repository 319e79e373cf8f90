#!/usr/bin/env bash
# Check the TensorRT path as far as it can be checked without TensorRT's libraries or a GPU.
#
#   TENSORRT_INCLUDE_DIR=/path/to/TensorRT/include scripts/check_trt_plugins.sh [--link] [--mypy]
#
# 1. (always) compiles every plugins/tensorrt/*.cpp against the real TensorRT headers with
#    -Wall -Wextra -Werror (g++, C++17). Headers: the `include/` folder of github.com/NVIDIA/TensorRT
#    (e.g. `git clone --depth 1 --branch v10.13.3 https://github.com/NVIDIA/TensorRT`), a tar/deb install
#    (/usr/include/x86_64-linux-gnu) or TENSORRT_ROOT/include.
# 2. --link: builds libmamba_deploy_trt_plugins.so with CMake (needs nvcc) and checks that it exports
#    getCreators and setLoggerFinder and does not depend on libnvinfer.
# 3. --mypy: type-checks the TensorRT Python modules against tensorrt-stubs (pip install --no-deps
#    tensorrt-stubs mypy), working around syntax errors in the generated stubs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INC="${TENSORRT_INCLUDE_DIR:-${TENSORRT_ROOT:+$TENSORRT_ROOT/include}}"
LINK=0 MYPY=0
for arg in "$@"; do
  case "$arg" in
    --link) LINK=1 ;;
    --mypy) MYPY=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown argument $arg" >&2; exit 2 ;;
  esac
done
HEADERS=1
if [[ -z "$INC" || ! -f "$INC/NvInferRuntime.h" ]]; then
  if [[ $MYPY -eq 1 && $LINK -eq 0 && -z "$INC" ]]; then
    HEADERS=0  # --mypy alone needs no headers (CI: PyPI carries no NvInfer.h)
    echo "== no TENSORRT_INCLUDE_DIR: skipping the plugin compile check, running mypy only"
  else
    echo "error: set TENSORRT_INCLUDE_DIR to a folder with NvInferRuntime.h (got '${INC}')" >&2
    exit 2
  fi
fi
if [[ $HEADERS -eq 1 ]]; then
  CUDA_INC="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc)")")}/include"
  [[ -f "$CUDA_INC/cuda_runtime_api.h" ]] || CUDA_INC=/usr/local/cuda/include
  CXX="${CXX:-g++}"
  VERSION=$(grep -E '^#define (TRT|NV_TENSORRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)? +[0-9]+' "$INC/NvInferVersion.h" \
            | awk '{print $3}' | head -3 | paste -sd.)
  echo "== compiling plugins/tensorrt against TensorRT ${VERSION} headers in $INC"
  status=0
  for src in "$ROOT"/plugins/tensorrt/*.cpp; do
    # TensorRT's and the kernel library's headers are not ours to lint: -isystem.
    if "$CXX" -std=c++17 -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -fPIC \
         -isystem "$INC" -isystem "$CUDA_INC" -isystem "$ROOT/plugins/kernels" -c "$src" -o /dev/null; then
      echo "ok   ${src#$ROOT/}"
    else
      echo "FAIL ${src#$ROOT/}"; status=1
    fi
  done
  [[ $status -eq 0 ]] || exit $status
fi

if [[ $LINK -eq 1 ]]; then
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
  echo "== building the shared library in $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -DMAMBA_DEPLOY_TENSORRT=ON -DTENSORRT_INCLUDE_DIR="$INC" \
        -DMAMBA_DEPLOY_CUDA_ARCHS="${MAMBA_DEPLOY_CUDA_ARCHS:-90}" >/dev/null
  cmake --build "$BUILD" --target mamba_deploy_trt_plugins -j"$(nproc)" >/dev/null
  LIB="$BUILD/plugins/tensorrt/libmamba_deploy_trt_plugins.so"
  EXPORTS=$(nm -D --defined-only "$LIB" | awk '$2 == "T" {print $3}' | sort | paste -sd' ')
  echo "exports: $EXPORTS"
  [[ "$EXPORTS" == "getCreators setLoggerFinder" ]] || { echo "FAIL: unexpected exports"; exit 1; }
  if readelf -d "$LIB" | grep -q 'NEEDED.*libnvinfer'; then echo "FAIL: links libnvinfer"; exit 1; fi
  echo "ok   $(basename "$LIB") ($(du -h "$LIB" | cut -f1))"
fi

if [[ $MYPY -eq 1 ]]; then
  echo "== mypy against tensorrt-stubs"
  SITE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  [[ -f "$SITE/tensorrt_bindings/tensorrt.pyi" ]] || { echo "error: pip install --no-deps tensorrt-stubs" >&2; exit 2; }
  STUBS="$(mktemp -d)"
  cp -r "$SITE/tensorrt" "$SITE/tensorrt_bindings" "$STUBS/"
  # tensorrt-stubs 10.x: parameters named `in` and a default-less parameter after defaults.
  sed -i -E 's/([(,] *)in: /\1in_: /g; s/(power: Weights = None, channel_axis: int)\)/\1 = ...)/' \
      "$STUBS/tensorrt_bindings/tensorrt.pyi"
  (cd "$ROOT" && MYPYPATH="$STUBS" python -m mypy)
  rm -rf "$STUBS"
fi
