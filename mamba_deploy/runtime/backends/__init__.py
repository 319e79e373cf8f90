"""Engine backends; each module registers itself with runtime.backend.register_backend."""
