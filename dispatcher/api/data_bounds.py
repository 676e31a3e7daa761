"""Bounds on a notification's ``data``: what every chunk message, ledger header and render
carries, so one request can't make them large, deep or unencodable.

* serialised size (compact JSON, UTF-8) at most ``DISPATCHER_MAX_DATA_BYTES``;
* nesting at most ``DISPATCHER_MAX_DATA_DEPTH`` levels (``{"a": 1}`` is 1, ``{"a": [1]}`` 2);
* JSON proper: no ``NaN``/``Infinity`` (Python's parser accepts them, PostgreSQL's ``jsonb``
  and most consumers do not) and no lone UTF-16 surrogates (``"\\ud800"`` parses to a string
  no UTF-8 encoder, the store's included, can write).

The depth walk is iterative and stops at the first level past the bound, so a pathological
document costs no more than the bound itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["DataBounds"]


@dataclass(frozen=True)
class DataBounds:
    max_bytes: int = 65_536
    max_depth: int = 16

    def check(self, data: Any) -> None:
        """Raise ``ValueError`` saying which bound ``data`` breaks."""
        if _depth_exceeds(data, self.max_depth):
            raise ValueError(f"nested deeper than {self.max_depth} levels (DISPATCHER_MAX_DATA_DEPTH)")
        try:
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError:
            raise ValueError("NaN and Infinity are not JSON numbers") from None
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError("contains a lone surrogate (\\ud800-\\udfff), which is not text") from None
        if size > self.max_bytes:
            raise ValueError(f"is {size} bytes as JSON; the limit is {self.max_bytes} "
                             "(DISPATCHER_MAX_DATA_BYTES)")


def _depth_exceeds(data: Any, limit: int) -> bool:
    level = [data] if isinstance(data, (dict, list)) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
    return False
