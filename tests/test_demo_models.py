"""The shipped demo models (examples/models/*-tiny-pydoc, trained by examples/train_tiny.py) load,
are small, generate English from the pydoc corpus, and decode consistently with prefill."""
import re
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from mamba_deploy import load_reference
from mamba_deploy.config import load_config

MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"
NAMES = ["mamba-tiny-pydoc", "mamba2-tiny-pydoc"]  # Mamba1 in mamba-ssm format, Mamba2 in HF format
PROMPT = "The list of "
WORD = re.compile(r"[a-z]+")


@lru_cache(maxsize=None)
def _load(name):
    folder = MODELS / name
    return load_reference(folder), Tokenizer.from_file(str(folder / "tokenizer.json"))


@lru_cache(maxsize=1)
def _corpus_words() -> frozenset:
    from pydoc_data.topics import topics
    return frozenset(WORD.findall(" ".join(topics.values()).lower()))


@torch.no_grad()
def _greedy(model, prompt_ids: list[int], n_tokens: int, prefix_len: int | None = None):
    """Greedy continuation: prefill prompt_ids[:prefix_len], decode the rest of the prompt token by
    token, then generate. Returns (new token ids, logits after the prompt (1, 1, V))."""
    prefix_len = prefix_len or len(prompt_ids)
    state = model.new_state(1)
    logits = model.prefill(torch.tensor([prompt_ids[:prefix_len]]), state)
    for tok in prompt_ids[prefix_len:]:
        logits = model.decode(torch.tensor([[tok]]), state)
    prompt_logits, out = logits.clone(), []
    for _ in range(n_tokens):
        out.append(int(logits[0, -1, :model.config.vocab_size].argmax()))
        logits = model.decode(torch.tensor([[out[-1]]]), state)
    return out, prompt_logits


@pytest.mark.parametrize("name", NAMES)
def test_demo_model_is_a_small_standard_checkpoint(name):
    folder = MODELS / name
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 10 * 2**20, f"{name} is {size / 2**20:.1f} MiB"
    weights = {"mamba-tiny-pydoc": "pytorch_model.bin", "mamba2-tiny-pydoc": "model.safetensors"}[name]
    assert (folder / weights).is_file() and (folder / "tokenizer.json").is_file()
    cfg = load_config(folder)
    _, tok = _load(name)
    assert cfg.arch == ("mamba2" if name.startswith("mamba2") else "mamba1")
    assert cfg.vocab_size_padded % 8 == 0 and cfg.vocab_size_padded - 8 < tok.get_vocab_size() <= cfg.vocab_size_padded
    text = "def f(x):\n    return x ** 2  # naïve €\n"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: any text round-trips


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_is_corpus_english(name):
    model, tok = _load(name)
    new, _ = _greedy(model, tok.encode(PROMPT).ids, 32)
    text = tok.decode(new)
    words = WORD.findall(text.lower())
    assert len(words) >= 8, f"too few words: {text!r}"
    known = sum(w in _corpus_words() for w in words) / len(words)
    assert known >= 0.8, f"{known:.0%} of the words are from the corpus: {text!r}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [1, 7])
def test_prefill_then_decode_matches_prefill(name, k):
    """prefill(L) == prefill(L - k) + k decode steps: same logits, same greedy continuation."""
    model, tok = _load(name)
    ids = tok.encode("Dictionaries are mutable; they can be created by the").ids
    full_new, full_logits = _greedy(model, ids, 16)
    split_new, split_logits = _greedy(model, ids, 16, prefix_len=len(ids) - k)
    torch.testing.assert_close(split_logits, full_logits, rtol=1e-4, atol=1e-4)
    assert split_new == full_new
