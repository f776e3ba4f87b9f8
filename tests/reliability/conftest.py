"""The battery's fixtures: case sizes and figures.

``--soak`` (declared in ``tests/conftest.py``, so ``pytest --soak``, ``python3
tools/test.py --soak`` and ``pytest tests/reliability --soak`` all take it) runs every
case at its full size and the RSS soak in every mode; without it each case runs its CI
size, chosen so that the whole battery stays under 3 minutes per interpreter on a
2-core machine, and the soak runs one mode briefly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .figures import record_figure


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--soak"))


@pytest.fixture
def size(soak: bool) -> Callable[[Any, Any], Any]:
    """``size(ci, full)``: the CI-sized count, or the full one under ``--soak``."""

    def choose(ci: Any, full: Any) -> Any:
        return full if soak else ci

    return choose


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``figure(text)``: this case's figure in this mode, for the report."""
    module = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    callspec = getattr(request.node, "callspec", None)
    mode = callspec.id if callspec is not None else "-"
    case = f"{module}/{request.node.originalname.removeprefix('test_')}"

    def note(text: str) -> None:
        request.node.user_properties.append(("figure", text))
        record_figure(case, mode, text)
        print(f"\n[{case}] {mode}: {text}")

    return note
