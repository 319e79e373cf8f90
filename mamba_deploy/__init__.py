"""mamba-deploy: export Mamba / Mamba-2 language models and run them as fast inference engines."""
from .checkpoint import load_reference
from .config import ModelConfig, load_config
from .errors import CheckpointError, ConfigError, MambaDeployError
from .runtime import Engine

__version__ = "0.1.0"

__all__ = ["CheckpointError", "ConfigError", "Engine", "MambaDeployError", "ModelConfig", "__version__", "load_config",
           "load_reference"]
