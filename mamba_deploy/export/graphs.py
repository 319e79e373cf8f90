"""The prefill and decode graphs of a Mamba1 (incl. Falcon-Mamba) / Mamba2 LM, with mamba-ssm's gated MLPs when
d_intermediate > 0, built node by node from the config.

Graph I/O (docs/architecture.md "Graph I/O"): input_ids int64 (batch, seq) [decode: (batch, 1)], past_conv_state.{i},
past_ssm_state.{i} -> logits (batch, n, vocab_padded), present_conv_state.{i}, present_ssm_state.{i}.
Dense layers are Gemm(transB=1) on (tokens, features), so weights keep the checkpoint's (out, in)
layout; norms and the SSM ops compute in float32 like the reference model.
NemotronH's MLP layers are two Gemms around Relu and a square. A hybrid's attention layers (mamba-ssm's MHA, or
NemotronH's with separate q/k/v/o projections) are standard ops: rotary (Cos, Sin), the new keys and values
written into the fixed-length caches past_key.{i} / past_value.{i} at each row's positions (ScatterElements),
then MatMul, a causal mask from past_length (Where), Softmax, MatMul; past_length -> present_length counts tokens.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from onnx import ModelProto, TensorProto, helper

from ..config import MAMBA2, ModelConfig
from ..models.state import io_name, state_layout
from ..ops import DOMAIN, DOMAIN_VERSION, get_op, rotary_inv_freq
from ..ops.onnx_bodies import emit_causal_conv1d
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
    max_seq_len: int = 0  # KV cache length of a hybrid's attention layers
    quant_bits: Optional[int] = None  # projections and LM head as MatMulNBits (export.quantize) with these bits


class _LMGraph:
    """Builds one graph; `self.batch` / `self.seqlen` are 1-element int64 shape tensors."""

    def __init__(self, cfg: ModelConfig, weights: dict[str, TensorProto], opts: GraphOptions, decode: bool):
        self.cfg, self.weights, self.opts, self.decode = cfg, weights, opts, decode
        self.g = GraphBuilder()
        self.used_ops: dict[str, tuple[dict, bool, Optional[dict]]] = {}
        self.batch = self.g.dim("input_ids", 0)
        self.seqlen = self.g.dim("input_ids", 1)
        self._positions: Optional[str] = None
        self._cos_sin: Optional[tuple[str, str]] = None

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
        k = {"in_proj": cfg.d_model, "x_proj": cfg.d_inner, "dt_proj": cfg.dt_rank, "out_proj": cfg.mixer_out_dim}
        return n, k.get(weight.split(".")[-2], cfg.d_model)

    def op(self, name: str, inputs: list[Optional[str]], attrs: dict, static: Optional[dict] = None) -> tuple[str, str]:
        has_optional = inputs[-1] is not None
        previous = self.used_ops.setdefault(name, (attrs, has_optional, static))
        if previous != (attrs, has_optional, static):
            raise ValueError(f"exporter bug: {name} used with different attributes in one graph")
        return get_op(name).emit(self.g, inputs, attrs, self.opts.plugin, static)

    def tokens(self, x: str, features: int) -> str:
        """(batch, seqlen, features) -> (batch, seqlen, features) from (tokens, features)."""
        return self.g.reshape(x, self.batch, self.seqlen, features)

    def rms(self, x32: str, eps: float) -> str:
        g = self.g
        mean_sq = g("ReduceMean", g("Pow", x32, g.f32(2.0)), g.const([-1]), keepdims=1)
        return g("Div", x32, g("Sqrt", g("Add", mean_sq, g.f32(eps))))

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
        if cfg.mixer_rms_eps is not None:  # Falcon-Mamba: weightless RMS norms (float32) on dt, B, C
            dt, B, C = (g("CastLike", self.rms(g("Cast", t, to=F32), cfg.mixer_rms_eps), t) for t in (dt, B, C))
        dt = self.matmul(dt, f"{layer}.dt_proj.weight")
        if not self.decode:
            dt, B, C = (g("Transpose", self.tokens(t, f), perm=[0, 2, 1]) for t, f in ((dt, d), (B, n), (C, n)))
        params = [self.w(f"{layer}.A"), B, C, self.w(f"{layer}.D"), self.w(f"{layer}.dt_proj.bias")]
        if self.decode:
            y, ssm_state = self.op("MambaSelectiveStateUpdate", [past_ssm, x, dt, *params, z], _dt_attrs(cfg),
                                   {"state_rank": len(cfg.ssm_state_shape(1))})
        else:
            y, ssm_state = self.op("MambaSelectiveScan", [x, dt, *params, past_ssm, z], {"delta_softplus": 1})
            y = g.reshape(g("Transpose", y, perm=[0, 2, 1]), -1, d)
        return self.linear(y, f"{layer}.out_proj"), conv_state, ssm_state

    def mamba2(self, hidden: str, layer: str, past_conv: str, past_ssm: str) -> tuple[str, str, str]:
        g, cfg = self.g, self.cfg
        gn, m = cfg.ngroups * cfg.d_state, cfg.mamba2_mlp_dim
        parts = [m, m] * bool(m) + [cfg.d_inner, cfg.conv_dim, cfg.nheads]  # [z0, x0,] z, xBC, dt
        *mlp, z, xbc, dt = g("Split", self.linear(hidden, f"{layer}.in_proj"), g.const(parts), axis=1,
                             outputs=len(parts))
        if not self.decode:
            xbc = g("Transpose", self.tokens(xbc, cfg.conv_dim), perm=[0, 2, 1])
        xbc, conv_state = self.conv(xbc, layer, past_conv)
        if not self.decode:
            xbc = g("Transpose", xbc, perm=[0, 2, 1])
        axis = 1 if self.decode else 2
        x, B, C = g("Split", xbc, g.const([cfg.d_inner, gn, gn]), axis=axis, outputs=3)
        lead = [0] if self.decode else [0, 0]  # Reshape's 0: the input's own batch (and seqlen) dims
        x = g.reshape(x, *lead, cfg.nheads, cfg.headdim)
        B, C = (g.reshape(t, *lead, cfg.ngroups, cfg.d_state) for t in (B, C))
        params = [self.w(f"{layer}.A"), B, C, self.w(f"{layer}.D"), self.w(f"{layer}.dt_bias")]
        if self.decode:
            y, ssm_state = self.op("MambaSelectiveStateUpdate", [past_ssm, x, dt, *params, None], _dt_attrs(cfg),
                                   {"state_rank": len(cfg.ssm_state_shape(1))})
        else:
            dt = self.tokens(dt, cfg.nheads)
            y, ssm_state = self.op("Mamba2ChunkScan", [x, dt, *params, past_ssm, None],
                                   {"chunk_size": cfg.chunk_size, **_dt_attrs(cfg)})
        y = self.gated_norm(g.reshape(y, -1, cfg.d_inner), z, f"{layer}.norm.weight")
        if mlp:  # mamba-ssm's d_ssm < d_inner: [silu(z0) * x0, y], silu rounded to the model dtype as torch does
            z0, x0 = mlp
            y = g("Concat", g("Mul", g("CastLike", self._silu32(z0), x0), x0), y, axis=1)
        return self.linear(y, f"{layer}.out_proj"), conv_state, ssm_state

    def gated_norm(self, y: str, z: str, weight: str) -> str:
        """rmsnorm(y * silu(z)) per group * weight; y, z: (tokens, d_inner)."""
        g, cfg = self.g, self.cfg
        h = g("Mul", g("Cast", y, to=F32), self._silu32(z))
        if cfg.ngroups == 1:  # no group reshapes: ONNX Runtime then fuses the norm with the weight
            h = self.rms(h, cfg.norm_eps)
        else:
            h = g.reshape(self.rms(g.reshape(h, -1, cfg.ngroups, cfg.d_inner // cfg.ngroups), cfg.norm_eps),
                          -1, cfg.d_inner)
        return g("CastLike", g("Mul", h, g("Cast", self.w(weight), to=F32)), y)

    def gated_mlp(self, x: str, prefix: str) -> str:
        """mamba-ssm's GatedMLP: fc2(y * silu(gate)), y, gate = halves of fc1(x); x: (tokens, d_model)."""
        g, width = self.g, self.cfg.d_intermediate
        y, gate = g("Split", self.linear(x, f"{prefix}.fc1"), g.const([width, width]), axis=1, outputs=2)
        return self.linear(g("CastLike", g("Mul", g("Cast", y, to=F32), self._silu32(gate)), y), f"{prefix}.fc2")

    # --- a hybrid's attention layer (models/attention.py)
    def positions(self) -> str:
        """(batch, seqlen) int64: past_length[b] + t, each new token's position."""
        if self._positions is None:
            g = self.g
            steps = g("Range", g.const(np.int64(0)), g("Squeeze", self.seqlen, g.const([0])), g.const(np.int64(1)))
            self._positions = g("Add", g.unsqueeze("past_length", 1), steps)
        return self._positions

    def rotary(self, x: str) -> str:
        """GPT-NeoX rotary embedding on the first attn_rotary_dim channels; x: (batch, seqlen, heads, head_dim)."""
        g, c = self.g, self.cfg
        half = c.attn_rotary_dim // 2
        if not half:
            return x
        if self._cos_sin is None:
            angles = g("Mul", g.unsqueeze(g("Cast", self.positions(), to=F32), 2),
                       g.const(rotary_inv_freq(c.attn_rotary_dim, c.attn_rotary_base).numpy(), np.float32))
            self._cos_sin = (g.unsqueeze(g("Cos", angles), 2), g.unsqueeze(g("Sin", angles), 2))  # (b, l, 1, half)
        cos, sin = self._cos_sin
        sizes = [half, half] + ([c.attn_head_dim - 2 * half] if c.attn_head_dim > 2 * half else [])
        parts = g("Split", g("Cast", x, to=F32), g.const(sizes), axis=3, outputs=len(sizes))
        x1, x2 = parts[0], parts[1]
        rotated = [g("Sub", g("Mul", x1, cos), g("Mul", x2, sin)), g("Add", g("Mul", x2, cos), g("Mul", x1, sin))]
        return g("CastLike", g("Concat", *rotated, *parts[2:], axis=3), x)

    def attention(self, hidden: str, layer: str, i: int) -> tuple[str, str, str]:
        """mamba-ssm's causal MHA over the KV caches; hidden (tokens, d_model) -> (tokens, d_model), present key
        and value (batch, heads_kv, max_seq_len, head_dim)."""
        g, c = self.g, self.cfg
        heads, heads_kv, dim = c.attn_num_heads, c.attn_num_heads_kv, c.attn_head_dim
        if c.attn_separate_proj:  # NemotronH
            parts = [self.linear(hidden, f"{layer}.{name}") for name in ("q_proj", "k_proj", "v_proj")]
        else:
            sizes = [heads * dim, heads_kv * dim, heads_kv * dim] + ([c.attn_mlp_dim] if c.attn_mlp_dim else [])
            projected = self.linear(hidden, f"{layer}.in_proj")
            if c.attn_d_conv:
                qkv, mlp = g("Split", projected, g.const([c.attn_qkv_dim, c.attn_mlp_dim]), axis=1, outputs=2) \
                    if c.attn_mlp_dim else (projected, None)
                projected = self.attn_conv(qkv, layer, i) if mlp is None else \
                    g("Concat", self.attn_conv(qkv, layer, i), mlp, axis=1)
            parts = g("Split", projected, g.const(sizes), axis=1, outputs=len(sizes))
        q, k, v = (g.reshape(t, self.batch, self.seqlen, n, dim) for t, n in zip(parts, (heads, heads_kv, heads_kv)))
        q, k = self.rotary(q), self.rotary(k)
        index = g("Expand", g.unsqueeze(self.positions(), 1, 3), g.shape(self.batch, heads_kv, self.seqlen, dim))
        key, value = (g("ScatterElements", f"past_{kind}.{i}", index, g("Transpose", t, perm=[0, 2, 1, 3]), axis=2,
                        outputs=[f"present_{kind}.{i}"]) for kind, t in (("key", k), ("value", v)))
        q32 = g.reshape(g("Transpose", g("Cast", q, to=F32), perm=[0, 2, 1, 3]),
                        self.batch, heads_kv, heads // heads_kv, self.seqlen, dim)
        keys_t = g("Transpose", g.unsqueeze(g("Cast", key, to=F32), 2), perm=[0, 1, 2, 4, 3])  # (b, hkv, 1, d, T)
        scores = g("Mul", g("MatMul", q32, keys_t), g.f32(c.softmax_scale))  # (b, hkv, group, seqlen, T)
        seen = g("LessOrEqual", g.const(list(range(self.opts.max_seq_len))), g.unsqueeze(self.positions(), 2))
        scores = g("Where", g.unsqueeze(seen, 1, 2), scores, g.f32(float("-inf")))
        out = g("MatMul", g("Softmax", scores, axis=-1), g.unsqueeze(g("Cast", value, to=F32), 2))
        out = g.reshape(g("Transpose", g.reshape(out, self.batch, heads, self.seqlen, dim), perm=[0, 2, 1, 3]),
                        -1, heads * dim)
        out = g("CastLike", out, hidden)
        if c.attn_mlp_dim:
            up, gate = g("Split", parts[3], g.const([c.attn_mlp_dim // 2] * 2), axis=1, outputs=2)
            out = g("Concat", out, g("CastLike", g("Mul", g("Cast", up, to=F32), self._silu32(gate)), up), axis=1)
        return self.linear(out, f"{layer}.{'o_proj' if c.attn_separate_proj else 'out_proj'}"), key, value

    def attn_conv(self, qkv: str, layer: str, i: int) -> str:
        """MHA's causal conv (bias, no activation) over qkv (tokens, qkv_dim), continuing past_conv_state.{i}; the
        standard-op body of MambaCausalConv1d inlined (the Mamba convs' function has the activation fixed)."""
        g, width = self.g, self.cfg.attn_qkv_dim
        x = g("Transpose", self.tokens(qkv, width), perm=[0, 2, 1])  # (batch, qkv_dim, seqlen)
        y, state = emit_causal_conv1d(g, x, self.w(f"{layer}.conv1d.weight"), self.w(f"{layer}.conv1d.bias"),
                                      f"past_conv_state.{i}", "none")
        g("Identity", state, outputs=[f"present_conv_state.{i}"])
        return g.reshape(g("Transpose", y, perm=[0, 2, 1]), -1, width)

    def relu2_mlp(self, x: str, prefix: str) -> str:
        """NemotronH's MLP layer: down_proj(relu(up_proj(x))^2), the square in float32; x: (tokens, d_model)."""
        g = self.g
        up = self.linear(x, f"{prefix}.up_proj")
        act = g("Relu", g("Cast", up, to=F32))
        return self.linear(g("CastLike", g("Mul", act, act), up), f"{prefix}.down_proj")

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
            if i in cfg.attn_layer_idx:
                hidden, _, _ = self.attention(normed, f"{layer}.mixer", i)
            elif i in cfg.mlp_layer_idx:
                hidden = self.relu2_mlp(normed, f"{layer}.mixer")
            else:
                hidden, conv, ssm = mixer(normed, f"{layer}.mixer", f"past_conv_state.{i}", f"past_ssm_state.{i}")
                outputs += [g("Identity", conv, outputs=[f"present_conv_state.{i}"]),
                            g("Identity", ssm, outputs=[f"present_ssm_state.{i}"])]
            if cfg.d_intermediate:
                normed, residual = self.add_norm(hidden, residual, f"{layer}.norm2")
                hidden = self.gated_mlp(normed, f"{layer}.mlp")
        if cfg.attn_layer_idx:
            g("Add", "past_length", self.seqlen, outputs=["present_length"])
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
            return [helper.make_tensor_value_info(f"{prefix}_{io_name(kind, layer)}", *state_io_type(cfg, opts, kind))
                    for kind, layer, _ in state_layout(cfg)]

        inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                ["batch", 1 if self.decode else "seq"]), *state_io("past")]
        outputs = [helper.make_tensor_value_info("logits", opts.dtype,
                                                 ["batch", positions, cfg.vocab_size_padded]),
                   *state_io("present")]
        graph = helper.make_graph(self.g.nodes, "decode" if self.decode else "prefill", inputs, outputs,
                                  initializer=list(self.weights.values()))
        functions = [get_op(name).onnx_function(attrs, has_opt, opts.opset, static) for name, (attrs, has_opt, static)
                     in self.used_ops.items()] if opts.plugin else []
        opsets = [helper.make_opsetid("", opts.opset)]
        if opts.quant_bits:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        if opts.plugin:
            opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        return helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name="mamba-deploy")


def state_io_type(cfg: ModelConfig, opts: GraphOptions, kind: str) -> tuple[int, list]:
    """(onnx element type, shape with a symbolic batch) of a state input/output of `kind` (state_layout)."""
    shapes = {"conv": (opts.dtype, cfg.conv_state_shape(1)), "ssm": (opts.state_dtype, cfg.ssm_state_shape(1)),
              "key": (opts.dtype, cfg.kv_cache_shape(1, opts.max_seq_len)),
              "value": (opts.dtype, cfg.kv_cache_shape(1, opts.max_seq_len)), "length": (TensorProto.INT64, (1,)),
              "attn_conv": (opts.dtype, cfg.attn_conv_state_shape(1))}
    elem, shape = shapes[kind]
    return elem, ["batch", *shape[1:]]


def _dt_attrs(cfg: ModelConfig) -> dict:
    lo, hi = cfg.dt_limit
    return {"dt_softplus": 1, "dt_limit_lo": float(lo), "dt_limit_hi": float(hi)}


def build_lm_graph(cfg: ModelConfig, weights: dict[str, TensorProto], opts: GraphOptions, decode: bool) -> ModelProto:
    """The prefill (decode=False) or decode graph as a ModelProto whose initializers are external."""
    return _LMGraph(cfg, weights, opts, decode).build()
