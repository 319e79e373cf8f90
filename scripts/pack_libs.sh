#!/usr/bin/env bash
# Here (no GPU needed): build the kernel library for sm_90 and pack it for the GPU machine (scratch/ travels
# with `run`'s carry):
#   bash scripts/pack_libs.sh                # -> scratch/libs.tar.xz: libs/prod/libmamba_deploy_kernels.so
#   bash scripts/pack_libs.sh --candidate REF
#       and libs/candidate/libmamba_deploy_kernels.so, built from commit REF's sources (a git worktree in
#       build-candidate/src): a kernel change to A/B against this tree's, with this tree's Python (REF must keep
#       the kernel ABI: the library's version and params sizes are checked when it loads)
#   bash scripts/pack_libs.sh --trace         # and libs/trace/: this tree's, built with MAMBA_DEPLOY_KERNEL_TRACE=ON
#       (the tensor-core GEMV stamps its phases: gpu_check.sh's timeline step, benchmarks/gemv_timeline.py)
# There:
#   mkdir -p /tmp/l && tar xJf scratch/libs.tar.xz -C /tmp/l && export MAMBA_DEPLOY_BUILD_KERNELS=0 \
#     MAMBA_DEPLOY_KERNEL_LIB=/tmp/l/libs/prod/libmamba_deploy_kernels.so
#   [export CANDIDATE_LIB=/tmp/l/libs/candidate/libmamba_deploy_kernels.so]
#   [export TRACE_LIB=/tmp/l/libs/trace/libmamba_deploy_kernels.so]
#   OUT=$OUT bash scripts/gpu_check.sh [STEP ...]
set -euo pipefail
cd "$(dirname "$0")/.."
candidate="" trace=0
while [ $# -gt 0 ]; do
  case "$1" in
    --candidate)  # resolved here, in this checkout: a relative REF (HEAD~1) inside the worktree names another commit
      candidate="$(git rev-parse --verify "${2:?--candidate needs a commit}^{commit}")"; shift 2 ;;
    --trace) trace=1; shift ;;
    *) echo "usage: bash scripts/pack_libs.sh [--candidate REF] [--trace]" >&2; exit 2 ;;
  esac
done
pack="$(mktemp -d)"
trap 'rm -rf "$pack"' EXIT
build() {  # build SOURCE_DIR BUILD_DIR NAME [CMAKE_ARG]: the library, copied to libs/NAME of the pack
  cmake -S "$1" -B "$2" -DCMAKE_CUDA_ARCHITECTURES=90 -G Ninja -DCMAKE_BUILD_TYPE=Release ${4:+"$4"} > /dev/null
  cmake --build "$2" --target mamba_deploy_kernels > /dev/null
  mkdir -p "$pack/libs/$3"
  cp "$2/libmamba_deploy_kernels.so" "$pack/libs/$3/"
}
build . build-prod prod -DMAMBA_DEPLOY_KERNEL_TRACE=OFF
[ "$trace" = 1 ] && build . build-trace trace -DMAMBA_DEPLOY_KERNEL_TRACE=ON
if [ -n "$candidate" ]; then
  src=build-candidate/src
  git worktree prune  # a worktree whose folder was deleted is still registered: add would refuse its path
  [ -d "$src" ] || git worktree add --detach "$src" "$candidate" > /dev/null
  # git -C in a plain folder would find this repository above it and move ITS checkout: only in our worktree
  [ -e "$src/.git" ] || { echo "error: $src exists and is not a git worktree; remove it" >&2; exit 1; }
  git -C "$src" checkout --quiet --detach "$candidate"
  build "$src" build-candidate/build candidate
fi
mkdir -p scratch
(cd "$pack" && tar cf - libs) | xz -9 -T2 > scratch/libs.tar.xz.tmp
mv scratch/libs.tar.xz.tmp scratch/libs.tar.xz
ls -l scratch/libs.tar.xz
