"""mamba_deploy.roofline: the counted floors, against hand counts of tiny configs and the native engine's own
byte counts of the published shapes."""
import pytest
import torch

from mamba_deploy import roofline as R
from mamba_deploy.config import parse_config
from mamba_deploy.random_init import preset_config


def tiny(preset: str):
    return parse_config({**preset_config(preset), "d_model": 64, "n_layer": 2, "vocab_size": 256})


def test_mamba1_decode_bytes_by_hand():
    cfg = tiny("mamba-130m")  # d_inner 128, d_state 16, dt_rank 4, d_conv 4; fp16 weights, A_log and D float32
    layer = (64 * 2 + 128 * 16 * 4 + 128 * 4 + 256 * 64 * 2 + 128 * 4 * 2 + 128 * 2 + 36 * 128 * 2 + 128 * 4 * 2
             + 128 * 2 + 64 * 128 * 2)
    assert R.weight_bytes(cfg) == 256 * 64 * 2 + 2 * layer + 64 * 2  # the tied embedding once, norm_f
    state = 2 * (3 * 128 * 3 * 2 + 3 * 128 * 16 * 4)  # batch 3: conv fp16, ssm float32
    assert R.state_bytes(cfg, 3) == state
    assert R.decode_counts(cfg, 3).bytes == R.weight_bytes(cfg) + 2 * state


def test_mamba2_state_bytes_follow_the_state_dtype():
    cfg = tiny("mamba2-130m")  # 2 heads of 64, d_state 128, conv over x, B and C: 384 channels
    conv = 384 * 3 * 2
    assert R.state_bytes(cfg, 1) == 2 * (conv + 2 * 64 * 128 * 4)
    assert R.state_bytes(cfg, 1, state_dtype=torch.bfloat16) == 2 * (conv + 2 * 64 * 128 * 2)


def test_mamba1_prefill_counts_by_hand():
    cfg = tiny("mamba-130m")
    projections = 256 * 64 + 36 * 128 + 128 * 4 + 64 * 128  # in_proj, x_proj, dt_proj, out_proj
    for tokens in (1, 100, 2048):
        c = R.prefill_counts(cfg, tokens)
        assert c.tc_flops == 2 * tokens * 2 * projections + 2 * 256 * 64  # the LM head on the last token
        assert c.exps == tokens * 2 * 128 * 16
        per_token = 2 * (256 + 128 + 2 * 64) + 2 * 4 * 64 + 2 * 2 * 2 * 128
        assert c.bytes == tokens * 2 * per_token
    assert R.prefill_counts(cfg, 10, batch=4).tc_flops == 4 * R.prefill_counts(cfg, 10).tc_flops


def test_mamba2_prefill_counts_the_ssd_products_and_no_exps():
    cfg = tiny("mamba2-130m")
    ssd = 64 * 128 + 64 * 128 + 4 * 128 * 128
    c = R.prefill_counts(cfg, 50)
    assert c.exps == 0
    assert c.tc_flops == 2 * 50 * R.projection_weights(cfg) + 2 * 256 * 64 + 50 * 2 * ssd
    assert R.projection_weights(cfg) == 2 * (514 * 64 + 64 * 128)


def test_ms_strict_is_the_largest_part_and_sequential_their_sum():
    c = R.Counts(bytes=R.COPY_BW * 2e-3, tc_flops=R.TC_FLOPS * 5e-3, exps=R.EX2_RATE * 1e-3)
    ms = c.ms()
    assert ms["bytes"] == pytest.approx(2) and ms["tensor cores"] == pytest.approx(5) and ms["exps"] == pytest.approx(1)
    assert ms["strict"] == pytest.approx(5) and ms["sequential"] == pytest.approx(8)


@pytest.mark.parametrize("preset,gb", [("mamba-1.4b", 2.779), ("mamba2-1.3b", 2.891), ("mamba-2.8b", 5.594),
                                       ("mamba2-2.7b", 5.745)])
def test_batch1_bytes_match_the_native_engines_count(preset, gb):
    """The engine counts the tensors it holds on the GPU (weight_bytes + 2 state_bytes; docs/performance.md,
    session 28's persistent table: 'GB a step'); the roofline counts parameter shapes on the meta device."""
    cfg = parse_config(preset_config(preset))
    assert R.decode_counts(cfg, 1).bytes / 1e9 == pytest.approx(gb, abs=5e-4)


def test_cli_prints_tables_and_rejects_bad_input(capsys):
    R.main(["mamba-130m", "--batches", "1", "64", "--tokens", "2048"])
    out = capsys.readouterr().out
    assert "| 64 |" in out and "| 2,048 |" in out and "strict ms" in out
    with pytest.raises(SystemExit, match="error: unknown preset 'nope'"):
        R.main(["nope"])
    with pytest.raises(SystemExit, match="error: batches and tokens must be >= 1"):
        R.main(["mamba-130m", "--tokens", "0"])
