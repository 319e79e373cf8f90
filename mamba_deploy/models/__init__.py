"""The PyTorch reference LM, written on the registry ops."""
from .lm import MambaLM
from .state import InferenceState

__all__ = ["InferenceState", "MambaLM"]
