"""Shared pytest fixtures for the upp-grid test suite."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# `from tests.servers... import ...` must work whatever pytest's import mode is.
_REPO_ROOT = str(Path(__file__).resolve().parents[1])
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from tests.servers.rucio_server import RucioTestServer  # noqa: E402

if TYPE_CHECKING:
    from tests.fakes.panda_server import FakePanda

# --------------------------------------------------------------------------------------------
# rucio: a real local rucio server (see tests/servers/rucio_server.py,
# docs/dev/rucio-test-server.md)
# --------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so the marker exists under any ini file.
    config.addinivalue_line(
        "markers", "rucio: tests that start the local rucio test server")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Every test that uses the server carries the marker, so `-m "not rucio"` deselects them.
    for item in items:
        if "rucio_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.rucio)


@pytest.fixture(scope="session")
def rucio_server():
    """A started ``RucioTestServer`` shared by the whole session.

    Never skips: if the server venv cannot be installed or the server does not come up, every
    test using it errors with the reason (pip log / server log tail).
    """
    server = RucioTestServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rucio_client_config(rucio_server, monkeypatch):
    """Point the rucio client *in this process* at the test server.

    Sets ``RUCIO_CONFIG``/``RUCIO_ACCOUNT`` and drops rucio-clients' cached config (it is read
    once per process and cached in ``rucio.common.config.get_config``).  Yields the config path.
    """
    for key, value in rucio_server.client_env().items():
        monkeypatch.setenv(key, value)
    _clean_rucio_config_cache()
    yield rucio_server.client_config_path
    monkeypatch.undo()
    _clean_rucio_config_cache()


def _clean_rucio_config_cache() -> None:
    if "rucio.common.config" in sys.modules:
        sys.modules["rucio.common.config"].clean_cached_config()


@pytest.fixture
def rucio_subprocess_env(rucio_server) -> dict[str, str]:
    """``os.environ`` plus the test server's client settings, for ``subprocess`` calls."""
    return {**os.environ, **rucio_server.client_env()}


# --------------------------------------------------------------------------------------------
# mock ntuples shared by the split tests (read-only: copy before modifying)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def split_ntuples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24k mock jets in 3 files (ttbar: files 0 and 2, Z': file 1), 40 tracks per jet."""
    from upp_grid.mock import make_mock

    out = tmp_path_factory.mktemp("split-ntuples")
    make_mock(out, num_jets=24_000, num_files=3, seed=7)
    return out


# --------------------------------------------------------------------------------------------
# PanDA: the fake PanDA server of tests/fakes/panda_server.py
# --------------------------------------------------------------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakePanda]:
    """A started fake PanDA server; the test fails if a hook or the server itself erred."""
    from tests.fakes.panda_server import FakePanda

    with FakePanda(tmp_path / "panda-cache") as server:
        yield server
        server.wait_for_hooks()
        assert server.hook_errors == []
        assert server.server_errors == []
