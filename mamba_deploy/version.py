"""The package version, at the bottom layer so that any module can record it (export metadata, build records)."""
__version__ = "0.1.0"
