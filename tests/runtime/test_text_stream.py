"""TextStream on the demo model's byte-level BPE tokenizer: pieces join to the full decode, stop strings
across piece boundaries, and decoding work linear in the number of tokens."""
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from mamba_deploy.runtime.generate import TextStream

TOKENIZER = Path(__file__).resolve().parents[2] / "examples" / "models" / "mamba-tiny-pydoc" / "tokenizer.json"
TEXT = "def naïve(x):\n    return x ** 2  # € 日本語 😀 — ok\n"


class CountingTokenizer:
    """The demo tokenizer, counting the tokens passed to decode."""

    def __init__(self):
        self.tokenizer, self.decoded = Tokenizer.from_file(str(TOKENIZER)), 0

    def decode(self, ids):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def tok():
    return CountingTokenizer()


def _random_ids(tok, rng, n):
    """Runs of TEXT's tokens (multi-byte characters split over tokens) mixed with random ids (which may
    also be partial or invalid UTF-8)."""
    text_ids, vocab = tok.tokenizer.encode(TEXT * 4).ids, tok.tokenizer.get_vocab_size()
    ids = []
    while len(ids) < n:
        start = rng.randrange(len(text_ids))
        ids += text_ids[start:start + rng.randrange(1, 12)] + [rng.randrange(vocab) for _ in range(rng.randrange(3))]
    return ids[:n]


def _stream(tok, ids, stops=()):
    stream = TextStream(tok, stops)
    pieces = []
    for token in ids:
        pieces.append(stream.push(token))
        if stream.stopped:
            break
    return pieces + [stream.flush()], stream.stopped


def test_pieces_join_to_the_full_decode(tok):
    rng = random.Random(0)
    for _ in range(300):
        ids = _random_ids(tok, rng, rng.randrange(1, 80))
        pieces, stopped = _stream(tok, ids)
        assert "".join(pieces) == tok.tokenizer.decode(ids) and not stopped


def test_stop_strings_across_piece_boundaries(tok):
    rng = random.Random(1)
    ids = tok.tokenizer.encode(TEXT * 3).ids
    text = tok.tokenizer.decode(ids)
    for _ in range(100):
        start = rng.randrange(len(text) - 6)
        stop = text[start:start + rng.randrange(2, 6)]
        pieces, stopped = _stream(tok, ids, [stop])
        assert stopped and "".join(pieces) == text[:text.find(stop)], stop


def test_decoding_work_is_linear(tok):
    """Each push decodes a bounded window: 5000 tokens decode well under 20 tokens each (re-decoding
    everything would be 2500 each on average)."""
    ids = _random_ids(tok, random.Random(2), 5000)
    tok.decoded = 0
    pieces, _ = _stream(tok, ids, ["never appears \x00"])
    assert "".join(pieces) == tok.tokenizer.decode(ids)
    assert tok.decoded <= 20 * len(ids)
