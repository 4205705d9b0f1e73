"""Where the merge's scratch goes: memory within a budget, disk beyond it; dead merges'
scratch in memory is removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from upp_grid.stages.merge_plan import SplitPaths
from upp_grid.stages.merge_scratch import ENV, ScratchSpace


def test_scratch_in_memory_within_the_budget_then_on_disk(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    space = ScratchSpace(root=shm)
    assert space.budget > 0
    train, val = SplitPaths(tmp_path / "out", "train"), SplitPaths(tmp_path / "out", "val")
    first = space.place(train, space.budget - 10)
    assert first.parent == space.root and first.name.startswith(f"{os.getpid()}-train-")
    second = space.place(val, 11)  # one byte beyond what is left: disk
    assert second == val.scratch and second.is_dir()
    space.release(first)
    assert not first.exists()
    again = space.place(val, 11)  # room again
    assert again.parent == space.root
    space.release_all()
    assert not again.exists() and not second.exists() and not space.root.exists()
    monkeypatch.setenv(ENV, "0")
    assert ScratchSpace(root=shm).budget == 0
    assert ScratchSpace(root=tmp_path / "absent").budget == 0


def test_the_scratch_of_dead_merges_is_removed(tmp_path: Path) -> None:
    root = tmp_path / f"upp-grid-scratch-{os.getuid()}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (root / f"{dead}-train-abcd1234").mkdir(parents=True)
    (root / f"{dead}-train-abcd1234" / "t0.tracks.bin").write_bytes(b"x" * 100)
    (root / f"{os.getpid()}-val-abcd1234").mkdir()
    ScratchSpace(root=tmp_path)
    assert sorted(p.name for p in root.iterdir()) == [f"{os.getpid()}-val-abcd1234"]
