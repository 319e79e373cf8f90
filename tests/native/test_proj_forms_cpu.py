"""Which form native.decode.proj launches (CPU, the kernels replaced by recorders): the conv update inside the
tensor-core GEMV's epilogue up to CONV_EPILOGUE_MAX_BATCH rows, as the conv kernel of its own above that (on the
tensor-core form's output or cuBLAS's), on the conv slice of the projection's output; the GEMV's wgmma form
asked for from the engine's wgmma_min_batch on, never for the CUDA-core batches."""
import types

import pytest
import torch

from mamba_deploy.native import decode as D


@pytest.fixture
def launches(monkeypatch):
    calls = []
    monkeypatch.setattr(D.G, "staged_ok", lambda x, w: False)
    monkeypatch.setattr(D.G, "tc_ok", lambda x, w: True)
    monkeypatch.setattr(D.G, "gemv",
                        lambda x, w, b, out, conv=None, algo="auto", **kw: calls.append(("gemv", conv, algo)))
    monkeypatch.setattr(D, "linear", lambda x, w, b, out: calls.append(("cublas", None, None)))
    monkeypatch.setattr(D.K, "causal_conv1d_update",
                        lambda xc, *a, out, **kw: calls.append(("conv", (xc.data_ptr(), tuple(xc.shape)), None)))
    return calls


def project(rows: int, tc_max_batch: int, wgmma_min_batch: int = 17):
    eng = types.SimpleNamespace(staged_gemv=frozenset(), staged_max_batch=0, gemv_max_batch=2,
                                tc_max_batch=tc_max_batch, wgmma_min_batch=wgmma_min_batch)
    x, w, out = torch.zeros(rows, 8), torch.zeros(12, 8), torch.zeros(rows, 12)
    conv = dict(lo=4, weight=torch.zeros(6, 4), bias=None, state=torch.zeros(rows, 6, 3), state_rows=None)
    D.proj(eng, x, w, None, out, conv, name="in_proj")
    return conv, (out[:, 4:10].data_ptr(), (rows, 6))


@pytest.mark.parametrize("rows", [1, 9, D.CONV_EPILOGUE_MAX_BATCH])
def test_conv_inside_the_gemv_up_to_the_limit(launches, rows):
    conv, _ = project(rows, tc_max_batch=64)
    assert launches == [("gemv", conv, "auto")]


@pytest.mark.parametrize("rows", [D.CONV_EPILOGUE_MAX_BATCH + 1, 64])
def test_conv_kernel_after_the_tensor_core_gemv_above_it(launches, rows):
    _, conv_slice = project(rows, tc_max_batch=64)
    assert launches == [("gemv", None, "wgmma"), ("conv", conv_slice, None)]


def test_conv_kernel_after_cublas(launches):
    _, conv_slice = project(32, tc_max_batch=16)
    assert launches == [("cublas", None, None), ("conv", conv_slice, None)]


@pytest.mark.parametrize("rows,want", [(1, "auto"), (2, "auto"), (3, "wgmma"), (16, "wgmma")])
def test_wgmma_form_from_wgmma_min_batch_past_the_cuda_core_batches(launches, rows, want):
    conv, _ = project(rows, tc_max_batch=16, wgmma_min_batch=1)
    assert launches == [("gemv", conv, want)]


def test_wgmma_form_not_below_wgmma_min_batch(launches):
    conv, _ = project(8, tc_max_batch=16, wgmma_min_batch=9)
    assert launches == [("gemv", conv, "auto")]
