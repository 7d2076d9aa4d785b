"""Secrets never leave in text: URLs lose their ``user:password@`` part wherever they are
printed or returned (error bodies, ``conscience.error``, stderr)."""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL in it replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", str(text))
