"""Engine API and generate on the onnxruntime and torch backends."""
import pytest
import torch

from mamba_deploy.errors import MambaDeployError
from mamba_deploy.runtime import Engine
from mamba_deploy.runtime.backend import backend_names
from mamba_deploy.runtime.generate import TextStream


@pytest.fixture(scope="module", params=["onnxruntime", "torch"])
def engine(request, export_dir):
    return Engine.load(export_dir, backend=request.param)


def test_auto_picks_onnxruntime_on_cpu(export_dir):
    assert Engine.load(export_dir).backend.name == "onnxruntime"
    assert {"auto", "onnxruntime", "torch", "native", "tensorrt"} <= set(backend_names())


def test_repr_names_the_folder_backend_and_shape(engine, export_dir):
    c = engine.config
    assert repr(engine) == (f"Engine({str(export_dir)!r}, backend={engine.backend.name!r}, {c.arch}, "
                            f"d_model={c.d_model}, layers={c.n_layer}, dtype=float32, state=float32, max_batch=16)")


def test_prefill_decode_update_state_in_place(engine):
    state = engine.new_state(2)
    conv0 = state.conv[0]
    ids = torch.randint(1, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    logits = engine.prefill(ids[:, :6], state)
    assert logits.shape == (2, 1, engine.config.vocab_size_padded)
    assert state.conv[0] is conv0 and conv0.abs().sum() > 0
    step = engine.decode(ids[:, 6:], state)
    whole = engine.prefill(ids, engine.new_state(2))
    assert torch.allclose(step, whole, rtol=1e-4, atol=1e-5)


def test_backends_agree(export_dir):
    ids = torch.tensor([[5, 6, 7, 8]])
    a, b = (Engine.load(export_dir, backend=n) for n in ("onnxruntime", "torch"))
    la, lb = a.prefill(ids, a.new_state(1)), b.prefill(ids, b.new_state(1))
    assert (la - lb).norm() / lb.norm() < 1e-5


def test_ragged_batch_equals_each_prompt_alone(engine):
    prompts = [[3, 4, 5], [10, 11, 12, 13, 14, 15, 16], [42]]
    for kwargs in (dict(temperature=0), dict(temperature=0.9, top_k=20, top_p=0.95, seed=3)):
        batch = engine.generate(prompts, max_new_tokens=6, **kwargs)
        assert batch == [engine.generate(p, max_new_tokens=6, **kwargs) for p in prompts]


def test_text_generation_stream_equals_whole(engine):
    whole = engine.generate("HI", max_new_tokens=12, temperature=0.8, seed=1)
    pieces = list(engine.generate("HI", max_new_tokens=12, temperature=0.8, seed=1, stream=True))
    assert "".join(pieces) == whole and all(isinstance(p, str) for p in pieces)
    batch = list(engine.generate(["HI", "A LONGER PROMPT"], max_new_tokens=4, temperature=0, stream=True))
    assert all(row in (0, 1) and isinstance(p, str) for row, p in batch)


def test_stop_token_and_repetition_penalty(engine):
    ids = engine.generate([5, 6], max_new_tokens=10, temperature=0)
    stopped = engine.generate([5, 6], max_new_tokens=10, temperature=0, stop=[ids[3]])
    assert stopped == ids[:ids.index(ids[3])]
    penalised = engine.generate([5, 6], max_new_tokens=10, temperature=0, repetition_penalty=100.0)
    assert len(set(penalised)) == len(penalised) and not {5, 6} & set(penalised)


def test_bad_inputs(engine):
    with pytest.raises(MambaDeployError):
        engine.prefill(torch.tensor([[1, 10_000]]), engine.new_state(1))
    with pytest.raises(MambaDeployError):
        engine.decode(torch.tensor([[1, 2]]), engine.new_state(1))
    with pytest.raises(MambaDeployError):
        engine.generate([], max_new_tokens=2)


class _Utf8Tokenizer:
    """ids are bytes; decode replaces incomplete UTF-8 by U+FFFD, as real byte-level tokenizers do."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_text_stream_multibyte_and_stop_strings():
    stream = TextStream(_Utf8Tokenizer())
    pieces = [stream.push(b) for b in "aé€".encode()]
    assert pieces == ["a", "", "é", "", "", "€"]
    stream = TextStream(_Utf8Tokenizer(), stop_strings=["END"])
    out = "".join(stream.push(b) for b in b"xyEN") + stream.push(ord("D"))
    assert out == "xy" and stream.stopped
    stream = TextStream(_Utf8Tokenizer(), stop_strings=["END"])
    out = "".join(stream.push(b) for b in b"xyEN!") + stream.flush()
    assert out == "xyEN!" and not stream.stopped


def test_generate_with_stop_string(engine):
    text = engine.generate("HI", max_new_tokens=16, temperature=0)
    if len(text) >= 4:
        stop = text[2:4]
        cut = engine.generate("HI", max_new_tokens=16, temperature=0, stop=stop)
        assert cut == text[:text.find(stop)]
