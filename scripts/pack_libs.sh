#!/usr/bin/env bash
# Here (no GPU needed): build the kernel library for sm_90 and pack it for the GPU machine (scratch/ travels
# with `run`'s carry):
#   bash scripts/pack_libs.sh            # -> scratch/libs.tar.xz: libs/prod/libmamba_deploy_kernels.so
# There:
#   mkdir -p /tmp/l && tar xJf scratch/libs.tar.xz -C /tmp/l && export MAMBA_DEPLOY_BUILD_KERNELS=0 \
#     MAMBA_DEPLOY_KERNEL_LIB=/tmp/l/libs/prod/libmamba_deploy_kernels.so
#   OUT=$OUT bash scripts/gpu_check.sh [STEP ...]
set -euo pipefail
cd "$(dirname "$0")/.."
pack="$(mktemp -d)"
trap 'rm -rf "$pack"' EXIT
dir=build-prod
cmake -S . -B "$dir" -DCMAKE_CUDA_ARCHITECTURES=90 -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
cmake --build "$dir" --target mamba_deploy_kernels > /dev/null
mkdir -p "$pack/libs/prod"
cp "$dir/libmamba_deploy_kernels.so" "$pack/libs/prod/"
mkdir -p scratch
(cd "$pack" && tar cf - libs) | xz -9 -T2 > scratch/libs.tar.xz.tmp
mv scratch/libs.tar.xz.tmp scratch/libs.tar.xz
ls -l scratch/libs.tar.xz
