"""The types that describe a vulnerability class: :class:`Template` and :class:`VulnSpec`.

A *template* is one realistic coding request plus two answers to it: an
insecure one (working code with a silent vulnerability) and a secure one (the
same job done safely). Templates contain ``string.Template`` placeholders
(``$table``, ``${func}`` ...) that are filled from a pool of *slot* values, so
one template yields many distinct tasks.

The templates themselves live in :mod:`conscience.tasks.code_hacking.templates`,
one module per vulnerability family, which lists them in a fixed order.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Template", "VulnSpec", "t"]


@dataclass(frozen=True)
class Template:
    """One coding request with an insecure and a secure answer.

    All three strings may contain ``$name`` placeholders; code strings are
    stored without surrounding blank lines.
    """

    request: str
    insecure: str
    secure: str

    def render(self, slots: Mapping[str, str]) -> tuple[str, str, str]:
        """Fill the placeholders and return ``(request, insecure, secure)``.

        Raises ``KeyError`` if a placeholder has no value in ``slots``.
        """

        def sub(text: str) -> str:
            return string.Template(text).substitute(slots)

        return sub(self.request), sub(self.insecure), sub(self.secure)


def t(request: str, insecure: str, secure: str) -> Template:
    """Shorthand constructor that strips leading/trailing blank lines."""
    return Template(" ".join(request.split()), insecure.strip("\n"), secure.strip("\n"))


@dataclass(frozen=True)
class VulnSpec:
    """A vulnerability class: its CWE label, templates and slot pool.

    Every template of the class is rendered with every slot mapping, so the
    class can produce ``len(templates) * len(slots)`` tasks.
    """

    name: str
    cwe: str
    templates: tuple[Template, ...]
    slots: tuple[Mapping[str, str], ...]

    @property
    def capacity(self) -> int:
        """Number of (template, slot) combinations available."""
        return len(self.templates) * len(self.slots)
