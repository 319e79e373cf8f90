"""Check an engine against PyTorch from Python: logits error per step, top-1 and greedy agreement.

    python examples/verify_engine.py out/mamba-tiny-pydoc --backend onnxruntime
"""
from __future__ import annotations

import argparse
import sys

from mamba_deploy import MambaDeployError
from mamba_deploy.verify import format_report, verify_export


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export_dir")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--oracle", default="reference", choices=["reference", "transformers"])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    try:
        report = verify_export(args.export_dir, backend=args.backend, oracle=args.oracle,
                               prompts=["The list of ", "Exceptions are raised"], steps=args.steps)
    except MambaDeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
