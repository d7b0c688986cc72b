"""Checks on what arrives over the wire. Each error names the field and says what is allowed."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9._:/@+-]{0,253}$")
NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
DEVICE_ID_RE = re.compile(r"^d-[0-9a-f]{12}$")
TOKEN_ID_RE = re.compile(r"^t-[0-9a-f]{12}$")
MAX_LABELS = 64


class Invalid(ValueError):
    """Bad input; the message names the field."""


def _short(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + f"... ({len(value)} chars)")


def labels(field: str, values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise Invalid(f"{field}: {len(values)} labels; at most {MAX_LABELS}")
    for key, value in values.items():
        if not LABEL_KEY_RE.match(key):
            raise Invalid(
                f"{field}: label key {_short(key)} is not allowed; use 1-63 letters, digits, "
                "'.', '_', '-' or '/', starting and ending with a letter or digit"
            )
        if not LABEL_VALUE_RE.match(value):
            raise Invalid(
                f"{field}[{key}]: value {_short(value)} is not allowed; use at most 253 "
                "letters, digits or . _ : / @ + -"
            )
    return dict(values)


def label_keys(field: str, keys: Iterable[str]) -> list[str]:
    out = list(keys)
    for key in out:
        if not LABEL_KEY_RE.match(key):
            raise Invalid(f"{field}: {_short(key)} is not a label key")
    return out


def name(field: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise Invalid(
            f"{field}: {_short(value)} is not a valid name; use 1-63 letters, digits, '.', "
            "'_' or '-', starting and ending with a letter or digit"
        )
    return value


def device_id(field: str, value: str) -> str:
    if not DEVICE_ID_RE.match(value):
        raise Invalid(f"{field}: {_short(value)} is not a device id (d- and 12 hex digits)")
    return value


def token_id(field: str, value: str) -> str:
    if not TOKEN_ID_RE.match(value):
        raise Invalid(f"{field}: {_short(value)} is not a token id (t- and 12 hex digits)")
    return value


def int_range(field: str, value: int, low: int, high: int, unit: str = "") -> int:
    if not low <= value <= high:
        raise Invalid(f"{field}: {value}{unit} is out of range; allowed {low}{unit}..{high}{unit}")
    return value


def finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise Invalid(f"{field}: {value} is not a finite number")
    return value


def text(field: str, value: str, max_len: int) -> str:
    if len(value) > max_len:
        raise Invalid(f"{field}: {len(value)} characters; at most {max_len}")
    return value


def json_object(field: str, value: str) -> dict:
    """``value`` parsed, if it is a JSON object; Invalid naming ``field`` otherwise."""
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise Invalid(f"{field}: not JSON ({e})") from None
    if not isinstance(parsed, dict):
        raise Invalid(f"{field}: must be a JSON object")
    return parsed
