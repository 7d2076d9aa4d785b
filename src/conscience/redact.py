"""Secrets never leave in text: URLs lose their ``user:password@`` part and the values of their
secret query parameters (``?api_key=``, ``?token=``, ...) wherever they are printed or returned
(error bodies, ``conscience.error``, stderr)."""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://token@host -> scheme://***@host
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+@")
# ?api_key=VALUE, &access_token=VALUE, ... -> ?api_key=***
_SECRET_QUERY = re.compile(
    r"(?i)([?&;](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|passwd|secret|"
    r"client[_-]?secret|sig|signature|x-api-key)=)[^&#;\s'\"]*")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL and the values of secret query parameters replaced
    by ``***``."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", str(text)))
