"""Decode ms per greedy graph step with plain launches and with programmatic dependent launch of the decode
kernels (ops._lib.set_programmatic_launch), alternately in one process, graphs recaptured for each setting.

    MAMBA_DEPLOY_KERNEL_LIB=build/libmamba_deploy_kernels.so PYTHONPATH=. \\
        python3 benchmarks/programmatic_launch.py --random-init mamba-1.4b mamba2-1.3b
"""
import argparse

import torch

from mamba_deploy.bench import bench_decode
from mamba_deploy.native import random_engine
from mamba_deploy.ops import _lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--random-init", nargs="+", default=["mamba-1.4b"])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    a = ap.parse_args()
    for name in a.random_init:
        eng = random_engine(name, max_batch=max(a.batches))
        for on in (False, True, False, True):
            _lib.set_programmatic_launch(on)
            eng.drop_graphs()
            ms = [bench_decode(eng, b, 32, 100, repeats=3) for b in a.batches]
            print(f"{name} programmatic={int(on)} ms/step at batch {'/'.join(map(str, a.batches))}: "
                  + " / ".join(f"{m:.3f}" for m in ms), flush=True)
        del eng
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
