#!/usr/bin/env bash
# On a GPU machine: the gpu-marked tests and the benchmarks, against a kernel library built beforehand
# (elsewhere is fine: cmake -S . -B build -DMAMBA_DEPLOY_CUDA_ARCHS=90 -G Ninja && cmake --build build).
#   MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so bash scripts/gpu_check.sh [tests] [bench] [generate]
# Output goes to stdout and, when $OUT is set, to $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MAMBA_DEPLOY_KERNEL_LIB:?set MAMBA_DEPLOY_KERNEL_LIB to a built libmamba_deploy_kernels.so}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests bench generate)
status=0
for step in "${steps[@]}"; do
  case "$step" in
    tests) timeout 480 python3 -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee -a "$log" | tail -15 || status=1 ;;
    bench) for m in mamba-1.4b mamba2-1.3b; do
             timeout 240 python3 -m mamba_deploy.bench --random-init "$m" --batches 1 16 64 2>&1 | tee -a "$log" | tail -6 || status=1
           done ;;
    generate) timeout 300 python3 -m mamba_deploy.bench --random-init mamba-1.4b --batches 1 16 64 --generate 2>&1 \
                | tee -a "$log" | tail -8 || status=1 ;;
    *) echo "unknown step $step (tests, bench, generate)"; exit 2 ;;
  esac
done
exit $status
