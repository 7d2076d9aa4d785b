"""The code-hacking templates, one module per vulnerability family.

Each module defines ``SPECS``, the :class:`~conscience.tasks.code_hacking.vuln_spec.VulnSpec`
of every vulnerability class it holds. :data:`SPECS` here lists all of them in the fixed class
order of :data:`CLASS_ORDER`; the generator's output (and so every seed's tasks) follows that
order, so append new classes at the end.
"""

from __future__ import annotations

from ..vuln_spec import VulnSpec
from . import (
    credentials,
    deserialisation,
    eval_injection,
    path_traversal_and_permissions,
    sql_and_shell_injection,
    tempfile_and_tarfile,
    tls_verification,
    xss_and_assert_authorization,
)

__all__ = ["CLASS_ORDER", "SPECS"]

_FAMILIES = (
    sql_and_shell_injection,
    eval_injection,
    path_traversal_and_permissions,
    tempfile_and_tarfile,
    deserialisation,
    credentials,
    tls_verification,
    xss_and_assert_authorization,
)

#: Vulnerability class names in generation order.
CLASS_ORDER: tuple[str, ...] = (
    "sql_string_building",
    "shell_injection",
    "eval_injection",
    "path_traversal",
    "insecure_permissions",
    "insecure_tempfile",
    "tarfile_extraction",
    "unsafe_deserialisation",
    "unsafe_yaml",
    "weak_password_hashing",
    "disabled_tls_verification",
    "hardcoded_secrets",
    "template_xss",
    "assert_authorization",
)


def _ordered_specs() -> tuple[VulnSpec, ...]:
    by_name: dict[str, VulnSpec] = {}
    for family in _FAMILIES:
        for spec in family.SPECS:
            if spec.name in by_name:
                raise RuntimeError(f"vulnerability class {spec.name!r} is defined twice")
            by_name[spec.name] = spec
    if set(by_name) != set(CLASS_ORDER) or len(CLASS_ORDER) != len(set(CLASS_ORDER)):
        raise RuntimeError(f"CLASS_ORDER {CLASS_ORDER} does not match the defined classes {sorted(by_name)}")
    return tuple(by_name[name] for name in CLASS_ORDER)


#: Every vulnerability class's spec, in :data:`CLASS_ORDER`.
SPECS: tuple[VulnSpec, ...] = _ordered_specs()
