"""One ModelConfig for Mamba1 (incl. Falcon-Mamba) and Mamba2, parsed from mamba-ssm or Hugging Face config.json.

All derived sizes (d_inner, dt_rank, nheads, conv_dim, padded vocabulary) live here and
nowhere else.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError

MAMBA1 = "mamba1"
MAMBA2 = "mamba2"
# Sane ranges of the integer fields (refused before anything is allocated); d_conv: what the kernels support.
INT_RANGES = {"d_model": (1, 2**16), "n_layer": (1, 1024), "vocab_size": (1, 2**24), "vocab_size_padded": (1, 2**24),
              "d_state": (1, 1024), "d_conv": (2, 8), "expand": (1, 16), "dt_rank": (1, 2**16), "headdim": (1, 1024),
              "ngroups": (1, 1024), "chunk_size": (1, 4096), "num_heads": (1, 2**16),
              "pad_vocab_size_multiple": (0, 2**16), "intermediate_size": (1, 2**20),
              "d_intermediate": (0, 2**18), "attn_num_heads": (1, 2**12), "attn_num_heads_kv": (1, 2**12),
              "attn_head_dim": (1, 1024), "attn_rotary_dim": (0, 1024), "attn_mlp_dim": (0, 2**18),
              "mamba_d_inner": (0, 2**20), "mamba2_mlp_dim": (0, 2**20)}
MLP_MULTIPLE = 128  # mamba-ssm's GatedMLP rounds its hidden width up to a multiple of this
ATTN_MLP_MULTIPLE = 256  # mamba-ssm's MHA rounds its in-projection MLP width (mlp_dim) up to a multiple of this
MAX_PARAMETERS = 10**12
_BOOL_FIELDS = ("bias", "conv_bias", "rms_norm", "residual_in_fp32", "tie_embeddings")
# added after export format 1: name -> unset value (to_dict leaves a field out when it holds this value)
_LATER_FIELDS = {"mixer_rms_eps": None, "d_intermediate": 0, "attn_layer_idx": (), "attn_num_heads": 0,
                 "attn_num_heads_kv": 0, "attn_head_dim": 0, "attn_rotary_dim": 0, "attn_rotary_base": 10000.0,
                 "attn_mlp_dim": 0, "attn_qkv_bias": True, "attn_out_bias": True, "attn_softmax_scale": None,
                 "attn_d_conv": 0, "attn_separate_proj": False, "mlp_layer_idx": (), "mlp_width": 0, "mlp_bias": False,
                 "mamba_d_inner": 0, "mamba2_mlp_dim": 0}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Mamba1 or Mamba2 language model."""

    arch: str  # "mamba1" | "mamba2"
    d_model: int
    n_layer: int
    vocab_size: int  # tokens the tokenizer can produce; logits beyond this are padding
    vocab_size_padded: int  # rows of the embedding / columns of the logits
    d_state: int
    d_conv: int
    expand: int
    dt_rank: int = 0  # Mamba1 only
    headdim: int = 0  # Mamba2 only
    ngroups: int = 1  # Mamba2 only
    chunk_size: int = 256  # Mamba2 only
    dt_limit: tuple[float, float] = (0.0, math.inf)  # Mamba2 only
    bias: bool = False  # in_proj / out_proj bias
    conv_bias: bool = True
    rms_norm: bool = True  # False: LayerNorm with bias (mamba-ssm only)
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    source_format: str = "mamba_ssm"  # "mamba_ssm" | "hf"
    mixer_rms_eps: Optional[float] = None  # Mamba1 only; set: Falcon-Mamba's weightless RMS norms on dt, B, C
    d_intermediate: int = 0  # > 0: a gated MLP of this hidden width after each mixer (mamba-ssm's Block + GatedMLP)
    # Hybrids: layers whose mixer is mamba-ssm's causal MHA (multi-head / grouped-query attention) instead of Mamba
    attn_layer_idx: tuple[int, ...] = ()
    attn_num_heads: int = 0
    attn_num_heads_kv: int = 0
    attn_head_dim: int = 0
    attn_rotary_dim: int = 0  # 0: no rotary embedding; else the first attn_rotary_dim channels (GPT-NeoX halves)
    attn_rotary_base: float = 10000.0
    attn_mlp_dim: int = 0  # MHA's gated MLP inside in_proj/out_proj (a multiple of 256; 0: none)
    attn_qkv_bias: bool = True
    attn_out_bias: bool = True
    attn_softmax_scale: Optional[float] = None  # None: 1 / sqrt(attn_head_dim)
    attn_d_conv: int = 0  # > 0: MHA's depthwise causal conv (with bias, no activation) over q, k, v of this width
    attn_separate_proj: bool = False  # NemotronH: q_proj, k_proj, v_proj, o_proj instead of MHA's in_proj, out_proj
    # NemotronH: layers whose mixer is an MLP, down_proj(relu(up_proj(x))^2), of hidden width mlp_width
    mlp_layer_idx: tuple[int, ...] = ()
    mlp_width: int = 0
    mlp_bias: bool = False
    mamba_d_inner: int = 0  # NemotronH: mamba_num_heads * mamba_head_dim, not a multiple of d_model; 0: expand * d_model
    # mamba-ssm's Mamba2 with d_ssm < expand * d_model: the SSM runs on d_ssm channels (d_inner below), the other
    # mamba2_mlp_dim are a gated MLP inside in_proj / out_proj: silu(z0) * x0, before y in out_proj's input
    mamba2_mlp_dim: int = 0

    @property
    def d_inner(self) -> int:
        """The SSM's channels (mamba-ssm's d_ssm)."""
        return (self.mamba_d_inner or self.expand * self.d_model) - self.mamba2_mlp_dim

    @property
    def mixer_out_dim(self) -> int:
        """out_proj's input: [silu(z0) * x0 (mamba2_mlp_dim), y (d_inner)]."""
        return self.d_inner + self.mamba2_mlp_dim

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim if self.arch == MAMBA2 else 0

    @property
    def conv_dim(self) -> int:
        """Channels the causal conv runs over (Mamba2 convolves x, B and C together)."""
        if self.arch == MAMBA2:
            return self.d_inner + 2 * self.ngroups * self.d_state
        return self.d_inner

    @property
    def conv_lo(self) -> int:
        """Where the conv's channels start in in_proj's output: Mamba1 [x, z]; Mamba2 [z0, x0, z, xBC, dt]."""
        return 2 * self.mamba2_mlp_dim + self.d_inner if self.arch == MAMBA2 else 0

    @property
    def in_proj_dim(self) -> int:
        if self.arch == MAMBA2:
            return 2 * self.mamba2_mlp_dim + self.d_inner + self.conv_dim + self.nheads  # [z0, x0,] z, xBC, dt
        return 2 * self.d_inner  # x, z

    @property
    def mamba_layers(self) -> tuple[int, ...]:
        """Indices of the Mamba layers (all but attn_layer_idx and mlp_layer_idx), in order."""
        return tuple(i for i in range(self.n_layer) if i not in self.attn_layer_idx and i not in self.mlp_layer_idx)

    @property
    def other_layers(self) -> str:
        """'' for a pure Mamba model, else what its other layers are ("attention layers", "MLP layers", both)."""
        kinds = [k for k, idx in (("attention", self.attn_layer_idx), ("MLP", self.mlp_layer_idx)) if idx]
        return " and ".join(kinds) + " layers" if kinds else ""

    @property
    def attn_qkv_dim(self) -> int:
        return self.attn_head_dim * (self.attn_num_heads + 2 * self.attn_num_heads_kv)

    @property
    def softmax_scale(self) -> float:
        return self.attn_softmax_scale if self.attn_softmax_scale is not None else self.attn_head_dim ** -0.5

    def attn_conv_state_shape(self, batch: int) -> tuple[int, ...]:
        """MHA's conv state of one attention layer (attn_d_conv > 0): the last attn_d_conv - 1 q, k, v inputs."""
        return (batch, self.attn_qkv_dim, self.attn_d_conv - 1)

    def kv_cache_shape(self, batch: int, max_seq_len: int) -> tuple[int, ...]:
        """Key (and value) cache of one attention layer: (batch, num_heads_kv, max_seq_len, head_dim)."""
        return (batch, self.attn_num_heads_kv, max_seq_len, self.attn_head_dim)

    def conv_state_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.conv_dim, self.d_conv - 1)

    def ssm_state_shape(self, batch: int) -> tuple[int, ...]:
        if self.arch == MAMBA2:
            return (batch, self.nheads, self.headdim, self.d_state)
        return (batch, self.d_inner, self.d_state)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["dt_limit"] = [self.dt_limit[0], self.dt_limit[1] if math.isfinite(self.dt_limit[1]) else "inf"]
        for name, unset in _LATER_FIELDS.items():  # only when set: older readers and slot fingerprints unchanged
            if out[name] == unset:
                del out[name]
        return out

    def parameter_estimate(self) -> int:
        """Elements of the big weights (embedding, head, per-layer projections and A): the size guard's measure."""
        embedding = self.vocab_size_padded * self.d_model * (1 if self.tie_embeddings else 2)
        per_layer = self.d_model * self.in_proj_dim + self.d_inner * self.d_model + self.conv_dim * self.d_conv
        if self.arch == MAMBA1:  # x_proj, dt_proj, A
            per_layer += self.d_inner * (2 * self.dt_rank + 3 * self.d_state)
        per_layer += 3 * self.d_model * self.d_intermediate  # fc1 (2 x), fc2
        attn = self.d_model * (self.attn_qkv_dim + self.attn_mlp_dim + self.attn_num_heads * self.attn_head_dim
                               + self.attn_mlp_dim // 2) + 3 * self.d_model * self.d_intermediate
        mlp = 2 * self.d_model * self.mlp_width
        return embedding + len(self.mamba_layers) * per_layer + len(self.attn_layer_idx) * attn + \
            len(self.mlp_layer_idx) * mlp

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of to_dict (our own canonical form, as written into export folders)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ConfigError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        kw = dict(data)
        if "dt_limit" in kw:
            kw["dt_limit"] = _dt_limit(kw["dt_limit"], "dt_limit")
        for key in ("attn_layer_idx", "mlp_layer_idx"):
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        try:
            cfg = cls(**kw)
        except TypeError as exc:
            raise ConfigError(f"incomplete model config: {exc}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        ints = ["d_model", "n_layer", "vocab_size", "vocab_size_padded", "d_state", "d_conv", "expand", "d_intermediate",
                "mamba_d_inner", "mamba2_mlp_dim"]
        if self.arch == MAMBA1:
            ints.append("dt_rank")
        elif self.arch == MAMBA2:
            ints += ["headdim", "ngroups", "chunk_size"]
        else:
            raise ConfigError(f"unknown architecture {self.arch!r} (expected mamba1 or mamba2)")
        for name in ints:
            _as_int(getattr(self, name), name, floats=False)
        for name in _BOOL_FIELDS:
            _as_bool(getattr(self, name), name)
        _as_float(self.norm_eps, "norm_eps", 0.0, 1.0)
        if self.mixer_rms_eps is not None:
            if self.arch != MAMBA1:
                raise ConfigError("config field 'mixer_rms_eps' (Falcon-Mamba's dt/B/C norms) is Mamba1 only")
            _as_float(self.mixer_rms_eps, "mixer_rms_eps", 0.0, 1.0)
        if self.attn_layer_idx or self.mlp_layer_idx:
            self._validate_layer_types()
        if self.parameter_estimate() > MAX_PARAMETERS:
            raise ConfigError(f"config: about {self.parameter_estimate():.3g} parameters, more than the "
                              f"{MAX_PARAMETERS:.0e} this tool accepts (check n_layer, d_model, vocab_size)")
        if self.vocab_size_padded < self.vocab_size:
            raise ConfigError("config: padded vocabulary is smaller than the vocabulary")
        if self.mamba2_mlp_dim and (self.arch != MAMBA2 or self.d_inner < 1):
            raise ConfigError("config field 'mamba2_mlp_dim' (mamba-ssm's d_ssm) must leave the Mamba2 SSM channels")
        if self.arch == MAMBA2:
            if self.d_inner % self.headdim:
                raise ConfigError(
                    f"config: d_inner {self.d_inner} is not a multiple of headdim {self.headdim}")
            if self.nheads % self.ngroups:
                raise ConfigError(
                    f"config: nheads {self.nheads} is not a multiple of ngroups {self.ngroups}")
            if self.d_inner % self.ngroups:
                raise ConfigError("config: d_inner is not a multiple of ngroups")
            lo, hi = self.dt_limit
            if not (0 <= lo < hi and math.isfinite(lo)):
                raise ConfigError(f"config field 'dt_limit' must satisfy 0 <= lo < hi, got {self.dt_limit}")


    def _validate_layer_types(self) -> None:
        for name in ("attn_layer_idx", "mlp_layer_idx"):
            idx = getattr(self, name)
            if not isinstance(idx, tuple) or any(isinstance(i, bool) or not isinstance(i, int) for i in idx) \
                    or list(idx) != sorted(set(idx)) or not all(0 <= i < self.n_layer for i in idx):
                raise ConfigError(f"field '{name}' must list distinct layer indices from 0 to {self.n_layer - 1}, "
                                  f"got {list(idx) if isinstance(idx, tuple) else idx!r}")
        if set(self.attn_layer_idx) & set(self.mlp_layer_idx) or not self.mamba_layers:
            raise ConfigError("field 'attn_layer_idx': a layer is attention or MLP, not both, and a model needs a "
                              "Mamba layer")
        _as_bool(self.attn_separate_proj, "attn_separate_proj")
        if self.mlp_layer_idx:
            _as_int(self.mlp_width, "mlp_width", "intermediate_size", floats=False)
            _as_bool(self.mlp_bias, "mlp_bias")
        if self.attn_layer_idx:
            self._validate_attention()

    def _validate_attention(self) -> None:
        for name in ("attn_num_heads", "attn_num_heads_kv", "attn_head_dim", "attn_rotary_dim", "attn_mlp_dim"):
            _as_int(getattr(self, name), name, floats=False)
        for name in ("attn_qkv_bias", "attn_out_bias"):
            _as_bool(getattr(self, name), name)
        if self.attn_num_heads % self.attn_num_heads_kv:
            raise ConfigError(f"field 'attn_cfg.num_heads_kv': num_heads {self.attn_num_heads} is not a multiple of "
                              f"num_heads_kv {self.attn_num_heads_kv}")
        if self.attn_rotary_dim % 2 or self.attn_rotary_dim > self.attn_head_dim:
            raise ConfigError(f"field 'attn_cfg.rotary_emb_dim' must be even and at most head_dim "
                              f"({self.attn_head_dim}), got {self.attn_rotary_dim}")
        if self.attn_d_conv:
            _as_int(self.attn_d_conv, "attn_d_conv", "d_conv", floats=False)
            if self.attn_separate_proj:
                raise ConfigError("field 'attn_d_conv': a conv before attention is mamba-ssm's MHA only")
        if self.attn_mlp_dim % ATTN_MLP_MULTIPLE:
            raise ConfigError(f"field 'attn_mlp_dim' must be a multiple of {ATTN_MLP_MULTIPLE}, got {self.attn_mlp_dim}")
        _as_float(self.attn_rotary_base, "attn_rotary_base", 1.0, 1e12)
        if self.attn_softmax_scale is not None:
            _as_float(self.attn_softmax_scale, "attn_softmax_scale", 1e-6, 1e6)


def load_config(path: str | Path) -> ModelConfig:
    """Parse `config.json` in a checkpoint folder (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"no config.json in {path}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return parse_config(data, origin=str(file))


def parse_config(data: dict[str, Any], origin: str = "config.json") -> ModelConfig:
    """Dispatch on the format: Hugging Face configs carry `model_type`, mamba-ssm's `d_model`."""
    try:
        if "model_type" in data:
            from .config_hf import from_hf_config

            cfg = from_hf_config(data)
        elif "d_model" in data:
            cfg = _from_mamba_ssm(data)
        else:
            raise ConfigError("neither 'model_type' (Hugging Face) nor 'd_model' (mamba-ssm) is set")
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"{origin}: malformed field ({exc})") from None
    return cfg


def _require(data: dict[str, Any], key: str) -> Any:
    if key not in data:
        raise ConfigError(f"missing field '{key}'")
    return data[key]


def _as_int(value: Any, key: str, field: str | None = None, floats: bool = True) -> int:
    """`value` as an int within INT_RANGES[field] (default: the key's last part); integral floats pass
    (unless not `floats`), bools, strings and other floats do not. `key`: the field as the user wrote it."""
    lo, hi = INT_RANGES[field or key.rsplit(".", 1)[-1]]
    number = int(value) if floats and isinstance(value, float) and value.is_integer() else value
    if isinstance(number, bool) or not isinstance(number, int) or not lo <= number <= hi:
        raise ConfigError(f"field '{key}' must be an integer from {lo} to {hi}, got {value!r}")
    return number


def _as_bool(value: Any, key: str) -> bool:
    """A JSON boolean only: the string "false" is an error, not True."""
    if not isinstance(value, bool):
        raise ConfigError(f"field '{key}' must be true or false, got {value!r}")
    return value


def _as_float(value: Any, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"field '{key}' must be a number from {lo} to {hi}, got {value!r}")
    return float(value)


def _pad(vocab: int, multiple: int) -> int:
    return vocab if multiple <= 1 else -(-vocab // multiple) * multiple


def _number(value: Any) -> float:
    """A float from JSON, where infinity may be written 'inf', 'Infinity' or {"__float__": "Infinity"} (HF)."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _dt_limit(value: Any, key: str) -> tuple[float, float]:
    try:
        lo, hi = (_number(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"field '{key}' must be a pair of numbers, got {value!r}") from None
    return lo, hi


def _from_mamba_ssm(data: dict[str, Any]) -> ModelConfig:
    from .config_hybrid import attention_fields

    d_intermediate = _as_int(data.get("d_intermediate", 0), "d_intermediate")
    ssm = data.get("ssm_cfg") or {}
    if not isinstance(ssm, dict):
        raise ConfigError("field 'ssm_cfg' must be an object")
    layer = ssm.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise ConfigError(f"field 'ssm_cfg.layer': unknown layer type {layer!r} (expected Mamba1 or Mamba2)")
    d_model = _as_int(_require(data, "d_model"), "d_model")
    vocab = _as_int(_require(data, "vocab_size"), "vocab_size")
    common = dict(
        d_model=d_model,
        n_layer=_as_int(_require(data, "n_layer"), "n_layer"),
        vocab_size=vocab,
        vocab_size_padded=_pad(vocab, _as_int(data.get("pad_vocab_size_multiple", 8), "pad_vocab_size_multiple")),
        d_conv=_as_int(ssm.get("d_conv", 4), "ssm_cfg.d_conv"),
        expand=_as_int(ssm.get("expand", 2), "ssm_cfg.expand"),
        bias=_as_bool(ssm.get("bias", False), "ssm_cfg.bias"),
        conv_bias=_as_bool(ssm.get("conv_bias", True), "ssm_cfg.conv_bias"),
        rms_norm=_as_bool(data.get("rms_norm", True), "rms_norm"),
        norm_eps=_as_float(data.get("norm_epsilon", 1e-5), "norm_epsilon", 0.0, 1.0),
        residual_in_fp32=_as_bool(data.get("residual_in_fp32", True), "residual_in_fp32"),
        tie_embeddings=_as_bool(data.get("tie_embeddings", True), "tie_embeddings"),
        source_format="mamba_ssm",
        d_intermediate=-(-d_intermediate // MLP_MULTIPLE) * MLP_MULTIPLE,  # GatedMLP's width (0 stays 0)
        **attention_fields(data, d_model),
    )
    if layer == "Mamba1":
        dt_rank = ssm.get("dt_rank", "auto")
        dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else _as_int(dt_rank, "ssm_cfg.dt_rank")
        return ModelConfig(arch=MAMBA1, d_state=_as_int(ssm.get("d_state", 16), "ssm_cfg.d_state"),
                           dt_rank=dt_rank, **common)
    return ModelConfig(
        arch=MAMBA2, mamba2_mlp_dim=_mamba2_mlp_dim(ssm, d_model * common["expand"]),
        d_state=_as_int(ssm.get("d_state", 128), "ssm_cfg.d_state"),
        headdim=_as_int(ssm.get("headdim", 64), "ssm_cfg.headdim"),
        ngroups=_as_int(ssm.get("ngroups", 1), "ssm_cfg.ngroups"),
        chunk_size=_as_int(ssm.get("chunk_size", 256), "ssm_cfg.chunk_size"),
        dt_limit=_dt_limit(ssm.get("dt_limit", (0.0, math.inf)), "ssm_cfg.dt_limit"),
        **common,
    )


def _mamba2_mlp_dim(ssm: dict[str, Any], d_inner: int) -> int:
    """expand * d_model - d_ssm (0 without d_ssm), after refusing the Mamba2 variants we do not run."""
    d_ssm = ssm.get("d_ssm")
    d_ssm = d_inner if d_ssm is None else _as_int(d_ssm, "ssm_cfg.d_ssm", "mamba_d_inner")
    if d_ssm > d_inner:
        raise ConfigError(f"field 'ssm_cfg.d_ssm': {d_ssm} is more than expand * d_model = {d_inner}")
    if _as_bool(ssm.get("D_has_hdim", False), "ssm_cfg.D_has_hdim"):
        raise ConfigError("field 'ssm_cfg.D_has_hdim': per-channel D is not supported yet")
    if not _as_bool(ssm.get("rmsnorm", True), "ssm_cfg.rmsnorm"):
        raise ConfigError("field 'ssm_cfg.rmsnorm': Mamba2 without the gated RMSNorm is not supported yet")
    if _as_bool(ssm.get("norm_before_gate", False), "ssm_cfg.norm_before_gate"):
        raise ConfigError("field 'ssm_cfg.norm_before_gate': norm_before_gate=true is not supported yet")
    return d_inner - d_ssm


def to_mamba_ssm_config(cfg: ModelConfig) -> dict[str, Any]:
    """The mamba-ssm config.json (d_model, ssm_cfg, ...) of `cfg`; _from_mamba_ssm reads it back."""
    if cfg.mixer_rms_eps is not None or cfg.mamba_d_inner or cfg.mlp_layer_idx or cfg.attn_separate_proj:
        raise ValueError("Falcon-Mamba and NemotronH have no mamba-ssm config format; use the Hugging Face one")
    ssm: dict[str, Any] = {"d_state": cfg.d_state, "d_conv": cfg.d_conv, "expand": cfg.expand,
                           "bias": cfg.bias, "conv_bias": cfg.conv_bias}
    if cfg.arch == MAMBA2:
        ssm.update(layer="Mamba2", headdim=cfg.headdim, ngroups=cfg.ngroups, chunk_size=cfg.chunk_size,
                   dt_limit=list(cfg.dt_limit), **({"d_ssm": cfg.d_inner} if cfg.mamba2_mlp_dim else {}))
    else:
        ssm.update(dt_rank=cfg.dt_rank)
    multiple = next((m for m in (1, 8, 16, 32, 64, 128, 256) if -(-cfg.vocab_size // m) * m == cfg.vocab_size_padded),
                    None)
    if multiple is None:
        raise ValueError(f"padded vocabulary {cfg.vocab_size_padded} is not a padding of {cfg.vocab_size}")
    attn = {} if not cfg.attn_layer_idx else {"attn_layer_idx": list(cfg.attn_layer_idx), "attn_cfg": {
        "num_heads": cfg.attn_num_heads, "num_heads_kv": cfg.attn_num_heads_kv, "head_dim": cfg.attn_head_dim,
        "rotary_emb_dim": cfg.attn_rotary_dim, "rotary_emb_base": cfg.attn_rotary_base, "mlp_dim": cfg.attn_mlp_dim,
        "qkv_proj_bias": cfg.attn_qkv_bias, "out_proj_bias": cfg.attn_out_bias, "softmax_scale":
        cfg.attn_softmax_scale, "causal": True, "d_conv": cfg.attn_d_conv}}
    return {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "vocab_size": cfg.vocab_size, "ssm_cfg": ssm,
            "d_intermediate": cfg.d_intermediate, **attn,
            "rms_norm": cfg.rms_norm, "norm_epsilon": cfg.norm_eps, "residual_in_fp32": cfg.residual_in_fp32,
            "pad_vocab_size_multiple": multiple, "tie_embeddings": cfg.tie_embeddings}
