"""`mamba-deploy triton`: a Triton Inference Server model repository for an export, for scale-out
(docs/architecture.md "Serving"). One model, served by Triton's sequence batcher with implicit state:
the onnxruntime backend runs the export's prefill graph under Triton's tensor names, the tensorrt backend
the prefill plan of `build --backend tensorrt`.

    write_triton_repository("out/mamba-1.4b", "triton-repo", TritonOptions(max_batch=8))
"""
from .options import TritonOptions
from .repository import TritonRepository, write_triton_repository

__all__ = ["TritonOptions", "TritonRepository", "write_triton_repository"]
