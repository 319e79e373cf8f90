"""benchmarks/gemv_timeline.py on the CPU: its phases worked out from stamp rows, and a one-line refusal where it
cannot run (no GPU here; on a GPU, a library built without timestamps)."""
import os
import pathlib
import subprocess
import sys

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gemv_timeline as T  # noqa: E402


def stamps(entry: int, phases_ns: list[int]) -> list[int]:
    row = [entry]
    for d in phases_ns:
        row.append(row[-1] + d)
    return row + [0, 0]  # the multiprocessor, then the unused value


def test_phases_and_gap_from_rows():
    prev = torch.tensor([stamps(0, [9000, 100, 500, 800, 300])])  # the call before leaves at 10,700 ns
    rows = torch.tensor([stamps(12_000, [10_000, 100, 500, 800, 300]),
                         stamps(12_400, [11_000, 200, 700, 1000, 400]),
                         stamps(12_100, [10_500, 150, 600, 900, 350])])
    line = T.row("m", "in_proj", 8, "mma_sync", 15.0, rows, prev)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:5] == ["m", "in_proj", "8", "mma_sync", "15.00"]
    assert cells[5] == "+1.30"  # first block 12,000 - the last exit before 10,700
    assert cells[6] == "0.40"   # the blocks started 400 ns apart
    assert cells[7] == "10.00 / 10.50 / 11.00"  # main loop min / median / max over the blocks
    assert cells[10] == "0.80 / 0.90 / 1.00"    # reduce + store
    assert cells[12] == "13.70"  # span: the last exit 12,400 + 13,300, less the first entry 12,000 ns


def test_refuses_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gemv_timeline.py"), "--batches", "8"],
                          capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode == 0:  # a GPU and a trace build: it ran
        assert proc.stdout.startswith("| model |")
        return
    assert proc.returncode == 1
    assert proc.stderr.startswith("gemv_timeline: ") and proc.stderr.count("\n") == 1, proc.stderr
