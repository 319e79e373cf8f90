#!/usr/bin/env bash
# On a GPU machine: the gpu-marked tests and the benchmarks, against a kernel library built beforehand
# (elsewhere is fine: cmake -S . -B build -DMAMBA_DEPLOY_CUDA_ARCHS=90 -G Ninja && cmake --build build).
#   MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so bash scripts/gpu_check.sh [STEP ...]
# Steps (default: tests bench generate):
#   tests        every gpu-marked test
#   bench        bench at batch 1 / 16 / 64, mamba-1.4b and mamba2-1.3b; with CANDIDATE_LIB set, alternately with
#                MAMBA_DEPLOY_KERNEL_LIB and with it, one process each, two rounds
#   generate     bench --generate, mamba-1.4b
#   state16      bench at batch 1 / 16 / 64 of the four models with the state in the model dtype (--state-dtype
#                model), as mamba-ssm keeps it: issue 13's like-for-like comparison
#   persistent   the persistent batch-1 decode's tests (first), then benchmarks/persistent_decode.py on four models;
#                with CANDIDATE_LIB set (pack_libs.sh --candidate), the tests against that library first, then the
#                benchmark alternately with it and with MAMBA_DEPLOY_KERNEL_LIB, one process each, two rounds
#   profile      the kernels of one decode step at batch 8, 16 and 64 (mamba-1.4b, mamba2-1.3b), launched plainly
#                (profile_step.py --plain-launch: each kernel's time its own, not its wait for the one before)
#   options      decode ms at batch 4-32 over the engine's placement options (benchmarks/decode_options.py: staged
#                forms, the Mamba1 dt_proj crossover), and at 32 / 64 our tensor-core projections against cuBLAS
#                (all of them, or out_proj alone), mamba-1.4b and mamba2-1.3b (the last part: step tc)
#   tc           options' comparison at batch 32 / 64 alone (and mamba-2.8b), the wgmma form at batch 4-16 against
#                mma.sync (wgmma_min_batch), after the tensor-core GEMV's tests and benchmarks/gemv_tc.py at batch
#                8-64 (with CANDIDATE_LIB set, alternately with it, two rounds); about 500 s
#   tc-kernels   tc's tests and gemv_tc.py alone; tc-options its decode_options runs alone (tc in two calls)
#   split        the split prefill (NativeEngine(prefill_split=k)) and the folded gated norm (fold_gated_norm): their
#                tests, then 2,048-token prefills of four models (and 8 x 2,048 of two) with each variant in turn,
#                32,768 tokens (time and memory) with k = 1 and 2 (2,048-token graphs) and k = 4 (8,192-token
#                eager chunks), and decode after split prefills (bench with --prefill-split 2, then 1: the split's
#                side stream slows later batch-32/64 decode graphs, session 35, hence the default's max_batch <= 16;
#                then benchmarks/side_stream_decode.py)
#   split-bench  split's benchmarks without its tests (for a run after `tests`, which includes them)
#   timeline     where a tensor-core GEMV call's time goes, block by block (benchmarks/gemv_timeline.py on TRACE_LIB,
#                a library built by `pack_libs.sh --trace`), plainly launched and as the engine launches
# Output goes to stdout and, when $OUT is set, to $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MAMBA_DEPLOY_KERNEL_LIB:?set MAMBA_DEPLOY_KERNEL_LIB to a built libmamba_deploy_kernels.so}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(tests bench generate)
status=0
run() {  # run LIMIT_S TAIL_LINES CMD...: the command under a time limit, its output logged, its tail shown, its time
  local limit=$1 lines=$2 start=$SECONDS; shift 2
  echo "+ $*" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log" | tail -n "$lines"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "  ($((SECONDS - start)) s)" | tee -a "$log"
}
ab() {  # ab LIMIT_S TAIL_LINES CMD...: run's, two rounds, alternately with MAMBA_DEPLOY_KERNEL_LIB and CANDIDATE_LIB
  local round lib
  for round in 1 2; do
    for lib in "$MAMBA_DEPLOY_KERNEL_LIB" "$CANDIDATE_LIB"; do
      echo "+ round $round, $lib" | tee -a "$log"
      MAMBA_DEPLOY_KERNEL_LIB="$lib" run "$@"
    done
  done
}
tc() {  # our tensor-core projections against cuBLAS at batch 32 / 64; their wgmma form at batch 4-16
  for m in mamba-1.4b mamba2-1.3b mamba-2.8b; do
    run 200 8 python3 benchmarks/decode_options.py --random-init "$m" --batches 32 64 --set tc_max_batch=16,64 \
      --set out_proj_tc_max_batch=16,64
    run 150 5 python3 benchmarks/decode_options.py --random-init "$m" --batches 4 8 16 --set wgmma_min_batch=17,3
  done
}
tc_kernels() {  # gemm_tc.cu's tests, then its projections at batch 32 / 64 against cuBLAS (against CANDIDATE_LIB's too)
  run 200 3 python3 -m pytest -q -m gpu tests/native/test_gemm_tc.py -p no:cacheprovider
  local cmd=(python3 benchmarks/gemv_tc.py --batches 8 16 32 64 --shapes in_proj dt_proj out_proj lm_head --clusters
             --repeats 9)
  if [ -n "${CANDIDATE_LIB:-}" ]; then ab 120 40 "${cmd[@]}"; else run 120 40 "${cmd[@]}"; fi
}
for step in "${steps[@]}"; do
  case "$step" in
    tests) run 480 15 python3 -m pytest -q -m gpu tests -p no:cacheprovider ;;
    bench) for m in mamba-1.4b mamba2-1.3b; do
             cmd=(python3 -m mamba_deploy.bench --random-init "$m" --batches 1 16 64)
             if [ -n "${CANDIDATE_LIB:-}" ]; then ab 240 6 "${cmd[@]}"; else run 240 6 "${cmd[@]}"; fi
           done ;;
    generate) run 300 8 python3 -m mamba_deploy.bench --random-init mamba-1.4b --batches 1 16 64 --generate ;;
    state16) for m in mamba-1.4b mamba2-1.3b mamba-2.8b mamba2-2.7b; do
               run 240 6 python3 -m mamba_deploy.bench --random-init "$m" --batches 1 16 64 --state-dtype model
             done ;;
    persistent)
      if [ -n "${CANDIDATE_LIB:-}" ]; then
        MAMBA_DEPLOY_KERNEL_LIB="$CANDIDATE_LIB" run 150 25 \
          python3 -m pytest -q -m gpu tests/native/test_persistent_decode.py -p no:cacheprovider
        ab 150 30 python3 benchmarks/persistent_decode.py mamba-1.4b mamba2-1.3b mamba-2.8b mamba2-2.7b --rounds 1
      else
        run 150 25 python3 -m pytest -q -m gpu tests/native/test_persistent_decode.py -p no:cacheprovider
        run 240 40 python3 benchmarks/persistent_decode.py mamba-1.4b mamba2-1.3b mamba-2.8b mamba2-2.7b --rounds 2
      fi ;;
    profile) for m in mamba-1.4b mamba2-1.3b; do
               run 200 60 python3 benchmarks/profile_step.py --random-init "$m" --batches 8 16 64 --plain-launch
             done ;;
    options)
      run 300 20 python3 benchmarks/decode_options.py --random-init mamba-1.4b --batches 4 8 16 32 \
        --set staged_max_batch=8,16 --set dt_gemm_min_batch=8,32 --set staged_gemv=out_proj,in_proj+out_proj
      run 300 20 python3 benchmarks/decode_options.py --random-init mamba2-1.3b --batches 4 8 16 32 \
        --set staged_max_batch=4,8,16 --set staged_gemv=out_proj,in_proj+out_proj
      tc ;;
    tc) tc_kernels; tc ;;
    tc-kernels) tc_kernels ;;
    tc-options) tc ;;
    timeline)
      : "${TRACE_LIB:?set TRACE_LIB to a library built with MAMBA_DEPLOY_KERNEL_TRACE=ON (pack_libs.sh --trace)}"
      for launch in "" --programmatic-launch; do
        MAMBA_DEPLOY_KERNEL_LIB="$TRACE_LIB" run 120 20 python3 benchmarks/gemv_timeline.py --shapes in_proj out_proj \
          lm_head --batches 8 16 64 --algos tensor_cores mma_sync $launch
      done ;;
    split|split-bench)
      [ "$step" = split ] && run 300 15 python3 -m pytest -q -m gpu tests/native/test_prefill_split.py \
        tests/native/test_fold_gated_norm.py tests/ops/test_fold_gated_norm_cuda.py tests/ops/test_chunk_scan_cuda.py \
        -p no:cacheprovider
      run 400 24 python3 benchmarks/prefill_models.py mamba-1.4b mamba2-1.3b mamba-2.8b mamba2-2.7b --tokens 2048 \
        --rounds 2 --ab-option prefill_split=1 --ab-option prefill_split=4 --ab-option fold_gated_norm=1
      run 300 12 python3 benchmarks/prefill_models.py mamba-1.4b mamba2-1.3b --tokens 2048 --batch 8 --rounds 1 \
        --repeats 5 --ab-option prefill_split=2 --ab-option fold_gated_norm=1  # issue 14's batch 8 <= 6x batch 1
      for m in mamba-1.4b mamba2-1.3b; do
        for k in 1 2; do
          run 200 4 python3 benchmarks/prefill_memory.py --random-init "$m" --lengths 32768 32768 --prefill-split "$k"
        done
        run 200 4 python3 benchmarks/prefill_memory.py --random-init "$m" --lengths 32768 32768 --prefill-split 4 \
          --chunk-len 8192
      done
      for k in 2 1; do
        run 240 6 python3 -m mamba_deploy.bench --random-init mamba-1.4b --batches 1 16 64 --prefill-split "$k"
      done
      run 120 5 python3 benchmarks/side_stream_decode.py --random-init mamba-1.4b --batch 64 ;;
    *) echo "unknown step $step (tests, bench, generate, state16, persistent, profile, options, tc, tc-kernels," \
         "tc-options, timeline, split, split-bench)"; exit 2 ;;
  esac
done
exit $status
