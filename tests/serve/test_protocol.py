"""Request bodies without a server: what needs a tokenizer, limits, and the token-id reply format."""
import pytest

from mamba_deploy.serve.protocol import APIError, Formatter, Limits, parse_completion

NO_TOKENIZER = Limits(tokenizer=None, vocab_size=100, max_prompt_tokens=8, max_tokens_limit=32)


@pytest.mark.parametrize("body,param,message", [
    ({"prompt": "text"}, "prompt", "must be token ids: this model has no tokenizer"),
    ({"prompt": [1, 2], "stop": "x"}, "stop", "strings need a tokenizer"),
    ({"prompt": [1, 2], "stop": ["s"] * 17}, "stop", "at most 16"),
    ({"prompt": [1, 100]}, "prompt", "in [0, 100)"),
    ({"prompt": [[1], list(range(9))]}, "prompt", "more than this server's limit of 8 (prompt 1)"),
    ({"prompt": [1], "max_tokens": 33}, "max_tokens", "[0, 32]"),
    ({"prompt": [1], "temperature": float("nan")}, "temperature", "must be a number >= 0"),
    ({"prompt": [1], "top_k": True}, "top_k", "must be an integer >= 0"),
    ({"prompt": [1], "seed": 2**64}, "seed", "[0, 2**64)"),
])
def test_refusals_name_the_field(body, param, message):
    with pytest.raises(APIError) as info:
        parse_completion(body, NO_TOKENIZER)
    assert info.value.status == 400 and info.value.param == param and message in info.value.message


def test_token_id_prompts_and_defaults():
    request = parse_completion({"prompt": [[1, 2], [3]], "seed": 7, "top_k": 5, "ignore_eos": True}, NO_TOKENIZER)
    assert request.prompts == [[1, 2], [3]] and request.max_tokens == 16 and request.seed == 7
    assert request.params.top_k == 5 and request.params.temperature == 1.0 and request.ignore_eos
    assert not request.stream and request.stop == []


def test_token_id_replies():
    fmt = Formatter(chat=False, model="m")
    assert fmt.choice(0, "", [4, 5], "length") == {"index": 0, "text": "", "finish_reason": "length",
                                                     "logprobs": None, "token_ids": [4, 5]}
    chunk = Formatter(chat=True, model="m").chunk(0, "hi", None, None, first=True)
    assert chunk["object"] == "chat.completion.chunk" and chunk["choices"][0]["delta"] == {"role": "assistant",
                                                                                           "content": "hi"}
