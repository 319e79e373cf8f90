"""User-facing errors: the CLI prints these as one line and exits 1."""
import numbers


class MambaDeployError(Exception):
    """A problem with the user's input (path, checkpoint, config, option), not a bug."""


class ConfigError(MambaDeployError):
    """A config.json that is missing, corrupt, or describes a model we do not support."""


class CheckpointError(MambaDeployError):
    """Weights that are missing, truncated, or do not match the config."""


class ParameterError(MambaDeployError):
    """A bad value for one named parameter of a public function, e.g. ParameterError("top_k", "must be ...").

    The message starts with the Python name (`top_k must be ...`); the CLI shows its flag instead
    (`--top-k must be ...`), which is why the name is kept apart in `param`.
    """

    def __init__(self, param: str, problem: str):
        super().__init__(f"{param} {problem}")
        self.param, self.problem = param, problem


def is_integer(value: object) -> bool:
    """An int (or a numpy integer), but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """An int or float (or a numpy one), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
