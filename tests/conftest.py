"""Fixtures shared by the contract suite and the suites built on its harness."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sockserve.aio.fastpath import PURE_PYTHON, Implementation, compiled
from test_contract import Harness, Kind
from unix_paths import short_directory


def pytest_addoption(parser: pytest.Parser) -> None:
    # Here, not in tests/reliability/conftest.py: pytest reads options only from the
    # conftest files of the paths it is given, and the README's command gives none.
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the reliability battery (tests/reliability) at full size, with the "
        "RSS soak in every mode",
    )


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for Unix sockets whose paths stay well under the AF_UNIX limit."""
    with short_directory(tmp_path_factory.mktemp("u")) as directory:
        yield directory


@pytest.fixture
def harness(kind: Kind, short_dir: Path, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(kind, short_dir, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture(params=["pure", "compiled"])
def implementation(request: pytest.FixtureRequest) -> Implementation:
    """The async mode's per-message path: pure Python, then the compiled one."""
    if request.param == "pure":
        return PURE_PYTHON
    built = compiled()
    if built is None:
        pytest.skip("the compiled fast path was not built")
    return built
