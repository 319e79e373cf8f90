"""A checkpoint shaped like mamba-1.4b (2.8 GB in float16) exports within time and memory bounds."""
import resource
import time

import onnx
import pytest
import torch

from mamba_deploy.export import ExportOptions, export_model
from mamba_deploy.random_init import make_random_checkpoint


@pytest.mark.slow
def test_export_mamba_1_4b_shaped_float16(tmp_path, capsys):
    ckpt = make_random_checkpoint("mamba-1.4b", tmp_path / "ckpt", dtype=torch.float16)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = export_model(ckpt, tmp_path / "out", ExportOptions(), progress=False)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    size_gib = (out / "weights.data").stat().st_size / 2**30
    with capsys.disabled():
        print(f"\nmamba-1.4b-shaped float16 export: {seconds:.1f} s, weights.data {size_gib:.2f} GiB, "
              f"peak RSS {peak_gib:.2f} GiB (before export {rss_before / 2**20:.2f} GiB)")
    assert size_gib > 2.0  # over the 2 GB protobuf limit: external data must work
    for name in ("prefill.onnx", "decode.onnx"):
        onnx.checker.check_model(str(out / name))
        assert (out / name).stat().st_size < 10 * 2**20
