"""Checkpoint formats (mamba-ssm .bin, HF safetensors, sharded), Hub cache, and clear errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mamba_deploy import load_reference
from mamba_deploy.checkpoint import resolve_checkpoint, weight_files
from mamba_deploy.errors import CheckpointError, ConfigError, ParameterError
from mamba_deploy.random_init import make_random_checkpoint

TINY = {"d_model": 32, "n_layer": 2, "vocab_size": 50, "ssm_cfg": {"d_state": 4}, "pad_vocab_size_multiple": 8}
TINY2 = {"d_model": 32, "n_layer": 2, "vocab_size": 50, "pad_vocab_size_multiple": 8,
         "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 16, "chunk_size": 8}, "tie_embeddings": False}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {
        "ssm1": make_random_checkpoint(TINY, root / "ssm1", "mamba_ssm", torch.float32, seed=1),
        "hf1": make_random_checkpoint(TINY, root / "hf1", "hf", torch.float32, seed=1),
        "ssm2": make_random_checkpoint(TINY2, root / "ssm2", "mamba_ssm", torch.float16, seed=2),
        "hf2": make_random_checkpoint(TINY2, root / "hf2", "hf", torch.float16, seed=2),
    }


def _logits(folder, dtype=torch.float32):
    return load_reference(folder, dtype=dtype)(torch.arange(10).reshape(2, 5))


@pytest.mark.parametrize("pair", [("ssm1", "hf1"), ("ssm2", "hf2")])
def test_both_formats_load_to_the_same_model(ckpts, pair):
    assert (ckpts[pair[0]] / "pytorch_model.bin").is_file() and (ckpts[pair[1]] / "model.safetensors").is_file()
    assert torch.equal(_logits(ckpts[pair[0]]), _logits(ckpts[pair[1]]))


def test_hf_keys_are_normalised(ckpts):
    keys = load_file(str(ckpts["hf1"] / "model.safetensors")).keys()
    assert "backbone.embeddings.weight" in keys and "lm_head.weight" not in keys  # tied


def test_dtype_conversion(ckpts):
    model = load_reference(ckpts["ssm2"], dtype=torch.bfloat16)
    assert model.backbone.layers[0].mixer.in_proj.weight.dtype == torch.bfloat16
    assert model.backbone.layers[0].mixer.A_log.dtype == torch.float32


def test_sharded_safetensors(ckpts, tmp_path):
    src = ckpts["hf2"]
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(tmp_path / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(src / "config.json", tmp_path / "config.json")
    assert len(weight_files(tmp_path)) == 2
    assert torch.equal(_logits(tmp_path), _logits(src))


def test_hub_id_from_offline_cache(ckpts, tmp_path, monkeypatch):
    snap = tmp_path / "hub" / "models--state-spaces--tiny" / "snapshots" / "abc123"
    shutil.copytree(ckpts["ssm1"], snap)
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_checkpoint("state-spaces/tiny") == snap
    assert torch.equal(_logits("state-spaces/tiny"), _logits(ckpts["ssm1"]))
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE"):
        resolve_checkpoint("state-spaces/absent")


@pytest.mark.parametrize("name,dtype", [("float32", torch.float32), ("float16", torch.float16),
                                        ("bfloat16", torch.bfloat16), ("fp32", torch.float32), ("fp16", torch.float16),
                                        ("bf16", torch.bfloat16), ("torch.float16", torch.float16)])
def test_dtype_by_name(ckpts, name, dtype):
    model = load_reference(ckpts["ssm1"], name)
    assert model.backbone.layers[0].mixer.in_proj.weight.dtype == dtype


@pytest.mark.parametrize("bad", ["float8", "int8", torch.int64, 16, None])
def test_unknown_dtype_is_a_parameter_error(ckpts, bad):
    with pytest.raises(ParameterError, match=r"^dtype must be a floating torch.dtype or one of float32, fp32"):
        load_reference(ckpts["ssm1"], bad)


def test_bad_inputs(ckpts, tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_checkpoint(str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a folder"):
        resolve_checkpoint(tmp_path / "file.txt")
    empty = tmp_path / "noweights"
    empty.mkdir()
    shutil.copy(ckpts["ssm1"] / "config.json", empty)
    with pytest.raises(CheckpointError, match="no weights"):
        load_reference(empty)
    with pytest.raises(ConfigError, match="no config.json"):
        load_reference(tmp_path)


def test_truncated_and_mismatched_weights(ckpts, tmp_path):
    for name, weights in (("ssm1", "pytorch_model.bin"), ("hf1", "model.safetensors")):
        bad = tmp_path / f"trunc-{name}"
        shutil.copytree(ckpts[name], bad)
        data = (bad / weights).read_bytes()
        (bad / weights).write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="cannot read weights"):
            load_reference(bad)
    other = tmp_path / "mismatch"
    shutil.copytree(ckpts["ssm1"], other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["ssm_cfg"]["d_state"] = 8
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config and weights do not match"):
        load_reference(other)
    missing = tmp_path / "missing-key"
    missing.mkdir()
    shutil.copy(ckpts["hf1"] / "config.json", missing)
    tensors = load_file(str(ckpts["hf1"] / "model.safetensors"))
    tensors.pop("backbone.norm_f.weight")
    save_file(tensors, str(missing / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*norm_f"):
        load_reference(missing)


def test_bin_is_loaded_weights_only(tmp_path, ckpts):
    """A pickle that would execute code is refused, not run."""
    evil = tmp_path / "evil"
    shutil.copytree(ckpts["ssm1"], evil)

    class Boom:
        def __reduce__(self):
            return (print, ("executed!",))

    torch.save({"x": Boom()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_reference(evil)


def _shard_index(src, folder, shard_for):
    """A two-shard copy of checkpoint `src` in `folder`; shard_for(i, default) names shard i in the index."""
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    folder.mkdir(exist_ok=True)
    weight_map = {}
    for i, keys in enumerate(halves):
        default = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in keys}, str(folder / default))
        weight_map.update({k: shard_for(i, default) for k in keys})
    shutil.copy(src / "config.json", folder / "config.json")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shard_outside_the_folder_is_refused(ckpts, tmp_path, how):
    """A valid shard elsewhere on disk is not read, however the index reaches it."""
    outside = _shard_index(ckpts["hf2"], tmp_path / "elsewhere", lambda i, name: name)
    if how == "symlink":
        folder = _shard_index(ckpts["hf2"], tmp_path / "model", lambda i, name: name)
        (folder / "model-00002-of-00002.safetensors").unlink()
        (folder / "model-00002-of-00002.safetensors").symlink_to(outside / "model-00002-of-00002.safetensors")
    else:
        target = "../elsewhere/" if how == "dotdot" else f"{outside}/"
        folder = _shard_index(ckpts["hf2"], tmp_path / "model", lambda i, name: target + name if i else name)
    with pytest.raises(CheckpointError, match="shard .* resolves outside"):
        load_reference(folder)


@pytest.mark.parametrize("weight_map", [{"backbone.norm_f.weight": 3}, {"backbone.norm_f.weight": ["a"]},
                                        ["model-00001-of-00002.safetensors"], "model.safetensors"])
def test_index_of_wrong_types_is_one_error(tmp_path, weight_map):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="corrupt index"):
        weight_files(tmp_path)


def test_weights_file_linking_out_is_refused(ckpts, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(ckpts["hf1"] / "config.json", folder)
    (folder / "model.safetensors").symlink_to(ckpts["hf1"] / "model.safetensors")
    with pytest.raises(CheckpointError, match="resolves outside"):
        weight_files(folder)


def test_hub_cache_links_into_blobs_are_inside(ckpts, tmp_path):
    """The Hugging Face cache stores snapshot files as links to ../../blobs: those are the repo's own."""
    repo = tmp_path / "models--org--sharded"
    src = _shard_index(ckpts["hf2"], tmp_path / "src", lambda i, name: name)
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for file in src.iterdir():
        shutil.copy(file, repo / "blobs" / file.name)
        (snap / file.name).symlink_to(f"../../blobs/{file.name}")
    assert len(weight_files(snap)) == 2
    assert torch.equal(_logits(snap), _logits(ckpts["hf2"]))


@pytest.mark.parametrize("fmt", ["mamba_ssm", "hf"])
def test_write_checkpoint_leaves_nothing_when_it_fails(tmp_path, monkeypatch, fmt):
    """An error (or an interrupt) while the weights are written: no temp folder, no output; a bad fmt: nothing made."""
    import mamba_deploy.random_init as random_init
    import safetensors.torch

    from mamba_deploy.config import parse_config
    from mamba_deploy.models import MambaLM

    model = MambaLM(parse_config({"d_model": 16, "n_layer": 1, "vocab_size": 50}), torch.float32)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(random_init.torch, "save", interrupted)
    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        random_init.write_checkpoint(model, tmp_path / "ckpt", fmt)
    with pytest.raises(ValueError, match="fmt must be"):
        random_init.write_checkpoint(model, tmp_path / "ckpt", "gguf")
    assert list(tmp_path.iterdir()) == []
