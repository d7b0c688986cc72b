"""Kept for the fleet services that import ``match_profile`` from here; the device profiles and
their matching live in :mod:`controller.build` (profiles.py, matching.py)."""

from __future__ import annotations

from controller.build.matching import match, match_profile

__all__ = ["match", "match_profile"]
