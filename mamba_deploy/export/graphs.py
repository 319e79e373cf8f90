"""The prefill and decode graphs of a Mamba1 / Mamba2 LM, built node by node from the config.

Graph I/O (docs/architecture.md "Graph I/O"): input_ids int64 (batch, seq) [decode: (batch, 1)], past_conv_state.{i},
past_ssm_state.{i} -> logits (batch, n, vocab_padded), present_conv_state.{i}, present_ssm_state.{i}.
Dense layers are Gemm(transB=1) on (tokens, features), so weights keep the checkpoint's (out, in)
layout; norms and the SSM ops compute in float32 like the reference model.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from onnx import ModelProto, TensorProto, helper

from ..config import MAMBA2, ModelConfig
from ..ops import DOMAIN, DOMAIN_VERSION, get_op
from ..ops.onnx_graph import INT64_MAX, GraphBuilder
from .quantize import BLOCK_SIZE, HEAD, QWEIGHT, SCALES
from .weights import ZERO_CONV_BIAS

F32 = TensorProto.FLOAT
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops (MatMulNBits)


@dataclasses.dataclass(frozen=True)
class GraphOptions:
    dtype: int  # onnx element type of the model (weights, activations, conv state)
    state_dtype: int  # onnx element type of the SSM state
    plugin: bool  # custom mamba_deploy ops (True) or their standard-op bodies inlined
    all_logits: bool  # prefill returns logits at every position
    opset: int
    quant_bits: Optional[int] = None  # projections and LM head as MatMulNBits (export.quantize) with these bits


class _LMGraph:
    """Builds one graph; `self.batch` / `self.seqlen` are 1-element int64 shape tensors."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, TensorProto], opts: GraphOptions, decode: bool):
        self.cfg, self.weights, self.opts, self.decode = cfg, weights, opts, decode
        self.g = GraphBuilder()
        self.used_ops: dict[str, tuple[dict, bool]] = {}
        self.batch = self.g.dim("input_ids", 0)
        self.seqlen = self.g.dim("input_ids", 1)

    # --- helpers
    def w(self, name: str) -> str:
        if name not in self.weights:
            raise KeyError(f"exporter bug: no initializer {name}")
        return name

    def linear(self, x2d: str, prefix: str) -> str:
        """x2d: (tokens, in) -> (tokens, out) with the (out, in) weight."""
        bias = f"{prefix}.bias"
        return self.matmul(x2d, f"{prefix}.weight", bias if bias in self.weights else None)

    def matmul(self, x2d: str, weight: str, bias: Optional[str] = None) -> str:
        """x2d @ weight^T (+ bias): a Gemm, or MatMulNBits when the export holds `weight` quantized."""
        if f"{weight}{QWEIGHT}" not in self.weights:
            return self.g("Gemm", x2d, self.w(weight), bias, transB=1)
        qweight, scales = self.w(f"{weight}{QWEIGHT}"), self.w(f"{weight}{SCALES}")
        n, k = self.quantized_dims(weight)
        # accuracy_level 4 (activations quantized to int8 per block) is MLAS' int8 path: on 2-core AVX2,
        # 23x faster than level 0 for a (1, 768) x (768, 3072) decode product, 2.5x for 512 rows.
        out = self.g("MatMulNBits", x2d, qweight, scales, domain=MS_DOMAIN, K=k, N=n, bits=self.opts.quant_bits,
                     block_size=BLOCK_SIZE, accuracy_level=4)
        return out if bias is None else self.g("Add", out, bias)

    def quantized_dims(self, weight: str) -> tuple[int, int]:
        """(N, K) of a quantized weight, from the config (K is not a multiple of the block in general)."""
        cfg = self.cfg
        n = self.weights[f"{weight}{QWEIGHT}"].dims[0]
        k = {"in_proj": cfg.d_model, "x_proj": cfg.d_inner, "dt_proj": cfg.dt_rank, "out_proj": cfg.d_inner}
        return n, k.get(weight.split(".")[-2], cfg.d_model)

    def op(self, name: str, inputs: list[Optional[str]], attrs: dict) -> tuple[str, str]:
        has_optional = inputs[-1] is not None
        previous = self.used_ops.setdefault(name, (attrs, has_optional))
        if previous != (attrs, has_optional):
            raise ValueError(f"exporter bug: {name} used with different attributes in one graph")
        return get_op(name).emit(self.g, inputs, attrs, self.opts.plugin)

    def tokens(self, x: str, features: int) -> str:
        """(batch, seqlen, features) -> (batch, seqlen, features) from (tokens, features)."""
        return self.g.reshape(x, self.batch, self.seqlen, features)

    def rms(self, x32: str, eps: float) -> str:
        g = self.g
        mean_sq = g("ReduceMean", g("Mul", x32, x32), g.const([-1]), keepdims=1)
        return g("Mul", x32, g("Reciprocal", g("Sqrt", g("Add", mean_sq, g.f32(eps)))))

    def add_norm(self, hidden: str, residual: Optional[str], prefix: str) -> tuple[str, str]:
        """residual <- hidden + residual (float32); returns (norm(residual) in the model dtype, residual)."""
        g, cfg = self.g, self.cfg
        res = g("Cast", hidden, to=F32)
        if residual is not None:
            res = g("Add", res, g("Cast", residual, to=F32))
        weight = g("Cast", self.w(f"{prefix}.weight"), to=F32)
        if cfg.rms_norm:
            out = g("Mul", self.rms(res, cfg.norm_eps), weight)
        else:
            out = g("LayerNormalization", res, weight, g("Cast", self.w(f"{prefix}.bias"), to=F32),
                    axis=-1, epsilon=cfg.norm_eps)
        out = g("Cast", out, to=self.opts.dtype)
        return out, (res if cfg.residual_in_fp32 else g("Cast", res, to=self.opts.dtype))

    def conv(self, x: str, layer: str, past: str) -> tuple[str, str]:
        bias = f"{layer}.conv1d.bias" if self.cfg.conv_bias else ZERO_CONV_BIAS
        name = "MambaCausalConv1dUpdate" if self.decode else "MambaCausalConv1d"
        return self.op(name, [x, self.w(f"{layer}.conv1d.weight"), self.w(bias), past], {"activation": "silu"})

    # --- mixers: hidden (tokens, d_model) -> (tokens, d_model)
    def mamba1(self, hidden: str, layer: str, past_conv: str, past_ssm: str) -> tuple[str, str, str]:
        g, cfg = self.g, self.cfg
        d, n = cfg.d_inner, cfg.d_state
        x, z = g("Split", self.linear(hidden, f"{layer}.in_proj"), g.const([d, d]), axis=1, outputs=2)
        if not self.decode:  # (tokens, d) -> (batch, d, seqlen)
            x, z = (g("Transpose", self.tokens(t, d), perm=[0, 2, 1]) for t in (x, z))
        x, conv_state = self.conv(x, layer, past_conv)
        x2d = x if self.decode else g.reshape(g("Transpose", x, perm=[0, 2, 1]), -1, d)
        dt, B, C = g("Split", self.linear(x2d, f"{layer}.x_proj"), g.const([cfg.dt_rank, n, n]), axis=1, outputs=3)
        dt = self.matmul(dt, f"{layer}.dt_proj.weight")
        if not self.decode:
            dt, B, C = (g("Transpose", self.tokens(t, f), perm=[0, 2, 1]) for t, f in ((dt, d), (B, n), (C, n)))
        params = [self.w(f"{layer}.A"), B, C, self.w(f"{layer}.D"), self.w(f"{layer}.dt_proj.bias")]
        if self.decode:
            y, ssm_state = self.op("MambaSelectiveStateUpdate", [past_ssm, x, dt, *params, z], _dt_attrs(cfg))
        else:
            y, ssm_state = self.op("MambaSelectiveScan", [x, dt, *params, past_ssm, z], {"delta_softplus": 1})
            y = g.reshape(g("Transpose", y, perm=[0, 2, 1]), -1, d)
        return self.linear(y, f"{layer}.out_proj"), conv_state, ssm_state

    def mamba2(self, hidden: str, layer: str, past_conv: str, past_ssm: str) -> tuple[str, str, str]:
        g, cfg = self.g, self.cfg
        gn = cfg.ngroups * cfg.d_state
        z, xbc, dt = g("Split", self.linear(hidden, f"{layer}.in_proj"), g.const([cfg.d_inner, cfg.conv_dim,
                                                                                   cfg.nheads]), axis=1, outputs=3)
        if not self.decode:
            xbc = g("Transpose", self.tokens(xbc, cfg.conv_dim), perm=[0, 2, 1])
        xbc, conv_state = self.conv(xbc, layer, past_conv)
        if not self.decode:
            xbc = g("Transpose", xbc, perm=[0, 2, 1])
        axis = 1 if self.decode else 2
        x, B, C = g("Split", xbc, g.const([cfg.d_inner, gn, gn]), axis=axis, outputs=3)
        lead = [self.batch] if self.decode else [self.batch, self.seqlen]
        x = g.reshape(x, *lead, cfg.nheads, cfg.headdim)
        B, C = (g.reshape(t, *lead, cfg.ngroups, cfg.d_state) for t in (B, C))
        params = [self.w(f"{layer}.A"), B, C, self.w(f"{layer}.D"), self.w(f"{layer}.dt_bias")]
        if self.decode:
            y, ssm_state = self.op("MambaSelectiveStateUpdate", [past_ssm, x, dt, *params, None], _dt_attrs(cfg))
        else:
            dt = self.tokens(dt, cfg.nheads)
            y, ssm_state = self.op("Mamba2ChunkScan", [x, dt, *params, past_ssm, None],
                                   {"chunk_size": cfg.chunk_size, **_dt_attrs(cfg)})
        y = self.gated_norm(g.reshape(y, -1, cfg.d_inner), z, f"{layer}.norm.weight")
        return self.linear(y, f"{layer}.out_proj"), conv_state, ssm_state

    def gated_norm(self, y: str, z: str, weight: str) -> str:
        """rmsnorm(y * silu(z)) per group * weight; y, z: (tokens, d_inner)."""
        g, cfg = self.g, self.cfg
        h = g("Mul", g("Cast", y, to=F32), self._silu32(z))
        h = g.reshape(self.rms(g.reshape(h, -1, cfg.ngroups, cfg.d_inner // cfg.ngroups), cfg.norm_eps),
                      -1, cfg.d_inner)
        return g("CastLike", g("Mul", h, g("Cast", self.w(weight), to=F32)), y)

    def _silu32(self, x: str) -> str:
        x32 = self.g("Cast", x, to=F32)
        return self.g("Mul", x32, self.g("Sigmoid", x32))

    # --- the whole LM
    def build(self) -> ModelProto:
        g, cfg = self.g, self.cfg
        hidden = g.reshape(g("Gather", self.w("backbone.embedding.weight"), "input_ids", axis=0), -1, cfg.d_model)
        residual, outputs = None, []
        mixer = self.mamba2 if cfg.arch == MAMBA2 else self.mamba1
        for i in range(cfg.n_layer):
            layer = f"backbone.layers.{i}"
            normed, residual = self.add_norm(hidden, residual, f"{layer}.norm")
            hidden, conv, ssm = mixer(normed, f"{layer}.mixer", f"past_conv_state.{i}", f"past_ssm_state.{i}")
            outputs += [g("Identity", conv, outputs=[f"present_conv_state.{i}"]),
                        g("Identity", ssm, outputs=[f"present_ssm_state.{i}"])]
        positions = self.seqlen
        if not self.decode and not self.opts.all_logits:  # keep only the last position
            hidden, residual = (g.reshape(g("Slice", self.tokens(t, cfg.d_model), g.const([-1]),
                                            g.const([INT64_MAX]), g.const([1])), -1, cfg.d_model)
                                for t in (hidden, residual))
            positions = g.const([1])
        normed, _ = self.add_norm(hidden, residual, "backbone.norm_f")
        head = HEAD if (self.opts.quant_bits or not cfg.tie_embeddings) else "backbone.embedding.weight"
        logits = self.matmul(normed, head)
        g("Reshape", logits, g.shape(self.batch, positions, cfg.vocab_size_padded), outputs=["logits"])
        return self._model()

    def _model(self) -> ModelProto:
        cfg, opts = self.cfg, self.opts
        positions = "seq" if (opts.all_logits and not self.decode) else 1

        def state_io(prefix: str) -> list:
            out = []
            for i in range(cfg.n_layer):
                out.append(helper.make_tensor_value_info(f"{prefix}_conv_state.{i}", opts.dtype,
                                                         ["batch", *cfg.conv_state_shape(1)[1:]]))
                out.append(helper.make_tensor_value_info(f"{prefix}_ssm_state.{i}", opts.state_dtype,
                                                         ["batch", *cfg.ssm_state_shape(1)[1:]]))
            return out

        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                ["batch", 1 if self.decode else "seq"]), *state_io("past")]
        outputs = [helper.make_tensor_value_info("logits", opts.dtype,
                                                 ["batch", positions, cfg.vocab_size_padded]),
                   *state_io("present")]
        graph = helper.make_graph(self.g.nodes, "decode" if self.decode else "prefill", inputs, outputs,
                                  initializer=list(self.weights.values()))
        functions = [get_op(name).onnx_function(attrs, has_opt, opts.opset) for name, (attrs, has_opt)
                     in self.used_ops.items()] if opts.plugin else []
        opsets = [helper.make_opsetid("", opts.opset)]
        if opts.quant_bits:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        if opts.plugin:
            opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        return helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="mamba-deploy")


def _dt_attrs(cfg: ModelConfig) -> dict:
    lo, hi = cfg.dt_limit
    return {"dt_softplus": 1, "dt_limit_lo": float(lo), "dt_limit_hi": float(hi)}


def build_lm_graph(cfg: ModelConfig, weights: dict[str, TensorProto], opts: GraphOptions, decode: bool) -> ModelProto:
    """The prefill (decode=False) or decode graph as a ModelProto whose initializers are external."""
    return _LMGraph(cfg, weights, opts, decode).build()
