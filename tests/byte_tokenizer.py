"""A small byte-level tokenizer for tiny test exports (shared by the runtime and CLI tests)."""
import json


def write_byte_tokenizer(folder):
    """A 100-token tokenizer: ids 0..99 <-> bytes 0x00..0x63 plus one 2-token UTF-8 letter (é = 0xC3 0xA9
    as ids 98, 99 instead), so streaming must hold back half characters. id 0 is <eos>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, **{f"<0x{b:02X}>": b for b in range(1, 98)}, "<0xC3>": 98, "<0xA9>": 99}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence([])
    tok.decoder = decoders.ByteFallback()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
