"""slmops agent: the device daemon. It stays light: no torch, no transformers (a test proves it)."""

__version__ = "0.1.0"
