"""mamba-deploy: export Mamba / Mamba-2 language models and run them as fast inference engines."""
from .checkpoint import load_reference
from .config import ModelConfig, load_config
from .errors import CheckpointError, ConfigError, MambaDeployError
from .runtime import Engine
from .version import __version__

__all__ = ["CheckpointError", "ConfigError", "Engine", "MambaDeployError", "ModelConfig", "__version__", "load_config",
           "load_reference"]
