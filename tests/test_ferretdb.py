"""The test FerretDB keeps its files, its state file included, in its own temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ferretdb import FerretDBServer

pytestmark = pytest.mark.servers


def test_the_test_ferretdb_writes_its_state_file_in_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where it was started: its state.json must not land here
    server = FerretDBServer()
    try:
        assert (Path(server.dir) / "state.json").exists()
    finally:
        server.stop()
    assert list(tmp_path.iterdir()) == []
