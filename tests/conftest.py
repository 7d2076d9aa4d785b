"""Fixtures shared by test files: the benchmark scripts, loaded as modules."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_module() -> Iterator[Callable[[str], ModuleType]]:
    """``benchmark_module("code_route")`` is ``benchmarks/code_route.py`` as a module, loaded once.
    It is registered in ``sys.modules`` while the tests run (a dataclass looks its module up while
    being defined) under a name no real module uses."""
    loaded: dict[str, ModuleType] = {}

    def load(name: str) -> ModuleType:
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"{name}_benchmark", BENCHMARKS / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    yield load
    for module in loaded.values():
        sys.modules.pop(module.__name__, None)
