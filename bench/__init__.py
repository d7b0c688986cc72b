"""Benchmarks: real processes, real sockets; run with `python -m bench.<name>` from the repo root."""
