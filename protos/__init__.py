"""Wire formats of slmops (package slmops.v1) and the Python code generated from them.

The generated ``*_pb2*.py`` files are committed; ``tests/test_protos.py`` regenerates them and
fails on any difference. Regenerate with ``python -m protos.generate``.
"""
