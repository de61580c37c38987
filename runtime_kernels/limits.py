"""The decode limits every edgepack decoder enforces (C kernels, ORT library, TFLite delegate,
exporter/inspect/convert): one place for the defaults and the environment-variable parsing.

``EDGEPACK_MAX_VIRTUAL_WEIGHTS`` bounds the virtual weights one node may decode (default 2^28);
``EDGEPACK_MAX_DECODED_BYTES`` bounds the bytes all decoded weights of one model/session may
take (default 1 GiB); the defaults come from the op spec (op_spec.LIMITS), as the C library's do.
Both must be a positive decimal integer; anything else is an error.
"""

from __future__ import annotations

import os

from edgepack.errors import EdgepackError
from edgepack.runtime_kernels.op_spec import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_VIRTUAL_WEIGHTS

__all__ = [
    "DEFAULT_MAX_VIRTUAL_WEIGHTS",
    "DEFAULT_MAX_DECODED_BYTES",
    "ENV_MAX_VIRTUAL_WEIGHTS",
    "ENV_MAX_DECODED_BYTES",
    "LimitError",
    "max_virtual_weights",
    "max_decoded_bytes",
    "parse_limit",
]

ENV_MAX_VIRTUAL_WEIGHTS = "EDGEPACK_MAX_VIRTUAL_WEIGHTS"
ENV_MAX_DECODED_BYTES = "EDGEPACK_MAX_DECODED_BYTES"
_MAX_VALUE = (1 << 63) - 1


class LimitError(EdgepackError, ValueError):
    """A decode limit is malformed, or a model asks to decode more than a limit allows."""


def parse_limit(name: str, value: str | int) -> int:
    """``value`` as a limit: a positive integer (decimal digits if a string, blanks around allowed,
    as the C library parses it) up to 2^63-1."""
    if isinstance(value, bool):
        raise LimitError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip(" \t")
        if not text.isascii() or not text.isdigit():
            raise LimitError(f"{name}={value!r} is not a positive decimal integer "
                             f"(e.g. {name}={DEFAULT_MAX_VIRTUAL_WEIGHTS})")
        number = int(text)
    if number < 1 or number > _MAX_VALUE:
        raise LimitError(f"{name}={value!r} is out of range: must be between 1 and {_MAX_VALUE}")
    return number


def _from_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw is None else parse_limit(name, raw)


def max_virtual_weights() -> int:
    """Virtual weights one node may decode: $EDGEPACK_MAX_VIRTUAL_WEIGHTS, default 2^28."""
    return _from_env(ENV_MAX_VIRTUAL_WEIGHTS, DEFAULT_MAX_VIRTUAL_WEIGHTS)


def max_decoded_bytes() -> int:
    """Bytes all decoded weights of one model may take: $EDGEPACK_MAX_DECODED_BYTES, default 1 GiB."""
    return _from_env(ENV_MAX_DECODED_BYTES, DEFAULT_MAX_DECODED_BYTES)
