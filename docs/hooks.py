"""MkDocs hooks of the documentation site.

The package's docstrings cross-reference with Sphinx roles (:class:`Verdict`); mkdocstrings renders
the name as code but leaves the role's text in front of it. This drops that text.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj):(?=<code>)")


def on_page_content(html: str, **_) -> str:
    return ROLE.sub("", html)
