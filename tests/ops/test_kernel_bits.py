"""scripts/kernel_bits.py's comparison and command line on the CPU (its `save` runs the kernels: GPU only)."""
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import kernel_bits as KB  # noqa: E402


def outputs(seed: int = 0) -> dict:
    """Two families as `save` writes them: a list of tensors a case."""
    g = torch.Generator().manual_seed(seed)
    return {"conv": [[torch.randn(2, 8, 5, generator=g), torch.randn(2, 8, 3, generator=g)] for _ in KB.CONV],
            "norm": [[torch.randn(3, 16, generator=g).half()] for _ in KB.NORM]}


def test_the_same_outputs_compare_equal():
    lines = []
    assert KB.compare(outputs(), outputs(), lines.append) == 0
    assert len(lines) == len(KB.CONV) + len(KB.NORM) + 1
    assert lines[-1] == f"0 of {len(KB.CONV) + len(KB.NORM)} cases differ or are missing"


def test_one_changed_bit_is_a_difference_with_its_size():
    a, b = outputs(), outputs()
    b["norm"][3][0].view(-1).view(torch.int16)[7] += 1  # the last mantissa bit of one fp16 value
    b["conv"][1][1][0, 0, 0] += 0.5
    lines = []
    assert KB.compare(a, b, lines.append) == 2
    differ = [line for line in lines if "DIFFER" in line]
    assert len(differ) == 2 and "max|d| 0, 0.5" in differ[0] and differ[1].startswith("norm")


def test_a_missing_family_or_case_counts():
    a, b = outputs(), outputs()
    del b["norm"]
    b["conv"].pop()
    lines = []
    assert KB.compare(a, b, lines.append) == 2
    assert "norm: only in the first file" in lines
    assert f"conv: {len(KB.CONV)} cases against {len(KB.CONV) - 1}" in lines


def test_command_line_compare_and_errors(tmp_path, capsys):
    same, other = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(outputs(), same)
    torch.save(outputs(seed=1), other)
    assert KB.main(["compare", str(same), str(same)]) == 0
    assert KB.main(["compare", str(same), str(other)]) == 1
    capsys.readouterr()
    assert KB.main(["compare", str(same), str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kernel_bits: cannot read a saved file") and err.count("\n") == 1
    for bad in (b"", b"garbage"):
        (tmp_path / "bad.pt").write_bytes(bad)
        assert KB.main(["compare", str(same), str(tmp_path / "bad.pt")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kernel_bits: cannot read a saved file") and err.count("\n") == 1
    torch.save([1, 2], tmp_path / "list.pt")
    assert KB.main(["compare", str(same), str(tmp_path / "list.pt")]) == 2
    with pytest.raises(SystemExit) as usage:
        KB.main(["save"])
    assert usage.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a GPU")
def test_save_without_a_gpu_is_refused(tmp_path, capsys):
    assert KB.main(["save", str(tmp_path / "a.pt"), "--only", "conv"]) == 2
    assert capsys.readouterr().err == "kernel_bits: save needs a CUDA GPU\n"
    assert not (tmp_path / "a.pt").exists()


@pytest.mark.gpu
def test_save_twice_gives_the_same_bits(tmp_path):
    """Every family's kernels on this GPU are deterministic, and the script's save runs: two saves, one library."""
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for path in paths:
        assert KB.main(["save", str(path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # no temp file left
    saved = torch.load(paths[0], weights_only=True)
    assert sorted(saved) == sorted(KB.FAMILIES)
    assert all(len(saved[name]) == len(KB.FAMILIES[name][0]) for name in saved)
    assert KB.main(["compare", str(paths[0]), str(paths[1])]) == 0
