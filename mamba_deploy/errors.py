"""User-facing errors: the CLI prints these as one line and exits 1."""


class MambaDeployError(Exception):
    """A problem with the user's input (path, checkpoint, config, option), not a bug."""


class ConfigError(MambaDeployError):
    """A config.json that is missing, corrupt, or describes a model we do not support."""


class CheckpointError(MambaDeployError):
    """Weights that are missing, truncated, or do not match the config."""
