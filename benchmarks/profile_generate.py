"""Where Engine.generate's time goes on the native backend: Python (cProfile, by cumulative time) and the GPU
(torch.profiler, by kernel), for one generate call of `batch` random prompts on random weights.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \
        python3 benchmarks/profile_generate.py --random-init mamba-1.4b --batch 64 --gen-len 50
"""
import argparse
import cProfile
import io
import pstats

import torch

from mamba_deploy.bench import engine_api
from mamba_deploy.native import random_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", default="mamba-1.4b")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--gen-len", type=int, default=50)
    a = ap.parse_args()
    api = engine_api(random_engine(a.random_init, max_batch=a.batch))
    gen = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, api.config.vocab_size, (a.batch, a.prompt_len), generator=gen).tolist()
    kwargs = dict(max_new_tokens=a.gen_len, temperature=0.7, top_p=0.9, seed=7)
    api.generate(prompts, **kwargs)  # warm-up: graphs, allocator
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    api.generate(prompts, **kwargs)
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    print(text.getvalue()[-6000:])
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        api.generate(prompts, **kwargs)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
