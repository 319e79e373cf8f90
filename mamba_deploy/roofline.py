"""Counted floors of decode and prefill for a model config, on the CPU (no weights, no GPU): the bytes a decode
step must move, and the work and bytes a prefill must issue, over the H200's measured rates.

    python3 -m mamba_deploy.roofline mamba-1.4b mamba2-1.3b --batches 1 16 64 --tokens 2048 32768

Decode at batch b reads every weight once and reads and writes the recurrent state (conv + ssm): its floor is
those bytes / COPY_BW. Prefill of L tokens (batch 1 unless given) is counted in three parts, each at its own rate:
  - tensor-core work: 2 L x every projection weight of the layers (the LM head on the last token only), plus
    Mamba2's SSD products (the causal half of C B^T and of its masked product with x in each chunk of CHUNK steps,
    the chunk states B^T x and their contribution C h) at TC_FLOPS;
  - Mamba1's exps: one exp(dt A) per state per step, L x d_inner x d_state a layer, at EX2_RATE (the multiprocessors'
    special-function units);
  - the bytes between the projections, everything there fused into one pass: in_proj's output read, the mixer's
    output written (out_proj's input), out_proj's output read, the residual read and written, the next norm's
    output written; Mamba1's conv output x and dt written and read again (x_proj and dt_proj are projections
    between them). At COPY_BW.
`strict` is the largest of the three (every part overlapping the others perfectly): no prefill beats it.
`sequential` is their sum: the parts depend on each other inside a layer (the scan needs in_proj's output,
out_proj the scan's), so a prefill whose kernels run one after another cannot beat it either without overlapping
a memory-bound pass with a compute-bound projection. Not counted: attention's score products and KV cache reads
(hybrids), the embedding lookup, the conv's and norms' arithmetic.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from typing import Optional, Sequence

import torch

from .config import MAMBA2, ModelConfig, parse_config
from .random_init import PRESETS, preset_config

COPY_BW = 4.3e12  # bytes/s: device-to-device copy, read + write, measured on the H200
TC_FLOPS = 790e12  # fp16 / bf16 dense tensor-core FLOP/s reached on the H200 (cuBLAS reached 776 on prefill shapes)
EX2_RATE = 132 * 16 * 1.98e9  # exps/s: 16 special-function results a cycle a multiprocessor, 132 at 1.98 GHz
CHUNK = 64  # steps of an SSD chunk (plugins/kernels/ssd_common.cuh kQ)


@dataclasses.dataclass(frozen=True)
class Counts:
    """What a model's decode step or prefill must do, before any rate is applied."""
    bytes: float = 0.0  # memory traffic that no fusion removes (the part named in the module docstring)
    tc_flops: float = 0.0  # tensor-core FLOPs
    exps: float = 0.0  # exp evaluations on the special-function units

    def ms(self) -> dict[str, float]:
        """Each part's floor in ms, their max (strict) and their sum (sequential)."""
        parts = {"bytes": self.bytes / COPY_BW * 1e3, "tensor cores": self.tc_flops / TC_FLOPS * 1e3,
                 "exps": self.exps / EX2_RATE * 1e3}
        return {**parts, "strict": max(parts.values()), "sequential": sum(parts.values())}


def _meta_model(cfg: ModelConfig, dtype: torch.dtype):
    from .models.lm import MambaLM
    return MambaLM(cfg, dtype, device="meta")  # shapes only: nothing is allocated


@functools.lru_cache(maxsize=64)  # a meta model per call: ~27 ms for mamba-2.8b on this CPU; configs are frozen
def weight_bytes(cfg: ModelConfig, dtype: torch.dtype = torch.float16) -> int:
    """Bytes of every parameter, a tied embedding once (what a decode step reads)."""
    return sum(p.numel() * p.element_size() for p in _meta_model(cfg, dtype).parameters())


def state_bytes(cfg: ModelConfig, batch: int, dtype: torch.dtype = torch.float16,
                state_dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the conv (model dtype) and ssm (state_dtype) state of `batch` rows over the Mamba layers."""
    n = len(cfg.mamba_layers)
    conv, ssm = torch.Size(cfg.conv_state_shape(batch)).numel(), torch.Size(cfg.ssm_state_shape(batch)).numel()
    return n * (conv * dtype.itemsize + ssm * state_dtype.itemsize)


def decode_counts(cfg: ModelConfig, batch: int, dtype: torch.dtype = torch.float16,
                  state_dtype: torch.dtype = torch.float32) -> Counts:
    """One decode step at `batch`: the weights read once, the state read and written (a hybrid's KV cache not
    counted)."""
    return Counts(bytes=weight_bytes(cfg, dtype) + 2 * state_bytes(cfg, batch, dtype, state_dtype))


@functools.lru_cache(maxsize=64)
def projection_weights(cfg: ModelConfig) -> int:
    """Elements of the layers' projection matrices (every nn.Linear but the LM head)."""
    model = _meta_model(cfg, torch.float16)
    return sum(m.weight.numel() for m in model.backbone.layers.modules() if isinstance(m, torch.nn.Linear))


def _ssd_flops_per_token(cfg: ModelConfig) -> float:
    """Mamba2's SSD tensor-core FLOPs (2 a multiply-add) per token and layer: a token's row of C B^T is CHUNK dot
    products of d_state per group and its row of (L o C B^T) x CHUNK x d_inner multiply-adds, half of each under
    the causal mask; the chunk states B^T x and their output C h, d_state x d_inner multiply-adds each."""
    intra = CHUNK * cfg.d_state * cfg.ngroups + CHUNK * cfg.d_inner
    return intra + 4 * cfg.d_state * cfg.d_inner


def _between_bytes_per_token(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes per token and Mamba layer between the projections, all of it fused into one pass (module docstring)."""
    e, res = dtype.itemsize, 4 if cfg.residual_in_fp32 else dtype.itemsize
    out = e * (cfg.in_proj_dim + cfg.mixer_out_dim + 2 * cfg.d_model) + 2 * res * cfg.d_model
    if cfg.arch != MAMBA2:
        out += 2 * 2 * e * cfg.d_inner  # x (the conv's output) and dt, each written and read again
    return out


def prefill_counts(cfg: ModelConfig, tokens: int, batch: int = 1, dtype: torch.dtype = torch.float16) -> Counts:
    """A prefill of `batch` prompts of `tokens` tokens (module docstring)."""
    n, total = len(cfg.mamba_layers), batch * tokens
    flops = 2.0 * total * projection_weights(cfg) + 2.0 * batch * cfg.vocab_size_padded * cfg.d_model
    exps = 0.0
    if cfg.arch == MAMBA2:
        flops += float(total) * n * _ssd_flops_per_token(cfg)
    else:
        exps = float(total) * n * cfg.d_inner * cfg.d_state
    return Counts(bytes=float(total) * n * _between_bytes_per_token(cfg, dtype), tc_flops=flops, exps=exps)


def report(name: str, batches: Sequence[int], tokens: Sequence[int], state_dtype: torch.dtype) -> list[str]:
    cfg = parse_config(preset_config(name), origin=f"preset {name}")
    lines = [f"{name}: weights {weight_bytes(cfg) / 1e9:.3f} GB (fp16), {state_dtype} ssm state",
             "| decode batch | GB a step | floor ms | tokens/s at the floor |", "| ---: | ---: | ---: | ---: |"]
    for b in batches:
        c = decode_counts(cfg, b, state_dtype=state_dtype)
        ms = c.ms()["bytes"]
        lines.append(f"| {b} | {c.bytes / 1e9:.3f} | {ms:.3f} | {b * 1e3 / ms:,.0f} |")
    lines += ["", "| prefill tokens | TFLOP | G exps | GB between | tensor cores ms | exps ms | bytes ms | "
              "strict ms | sequential ms |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in tokens:
        c = prefill_counts(cfg, t)
        ms = c.ms()
        lines.append(f"| {t:,} | {c.tc_flops / 1e12:.2f} | {c.exps / 1e9:.1f} | {c.bytes / 1e9:.1f} | "
                     f"{ms['tensor cores']:.2f} | {ms['exps']:.2f} | {ms['bytes']:.2f} | {ms['strict']:.2f} | "
                     f"{ms['sequential']:.2f} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", metavar="PRESET", help=f"one of: {', '.join(PRESETS)}")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 32768])
    ap.add_argument("--state-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    a = ap.parse_args(argv)
    if min(a.batches + a.tokens) < 1:
        sys.exit("error: batches and tokens must be >= 1")
    unknown = [m for m in a.models if m.lower() not in PRESETS]
    if unknown:
        sys.exit(f"error: unknown preset {unknown[0]!r}; known: {', '.join(PRESETS)}")
    state_dtype = getattr(torch, a.state_dtype)
    for name in a.models:
        print("\n".join(report(name, a.batches, a.tokens, state_dtype)) + "\n")


if __name__ == "__main__":
    main()
