"""The package version (pyproject.toml states the same for pip)."""

__version__ = "0.1.0"
