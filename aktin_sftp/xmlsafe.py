"""The one rule for XML we read: no DOCTYPE. Entity declarations (expansion bombs, external
entities) can only come with one, and neither the broker nor a status XML ever has one."""

from __future__ import annotations

import re

_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)


def declares_doctype(data: bytes) -> bool:
    return _DOCTYPE.search(data) is not None
