"""A full disk names the stage and the file, leaves no scratch behind; a rerun removes what a
killed run left."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.cli_support import REPO, run_process
from upp_grid.mock import make_mock
from upp_grid.yamlload import load_yaml, to_plain


def write_config(base: Path, ntuples: Path) -> Path:
    data = to_plain(load_yaml(REPO / "configs" / "demo.yaml"))
    data["global"].update(base_dir=str(base), ntuple_dir=str(ntuples))
    data["reweighting"]["max_zero_weight_fraction"] = 1.0
    path = ntuples.parent / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def private_tmpfs_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs "
                            "/tmp && echo ok"], capture_output=True, text=True, check=False)
    return probe.stdout.strip() == "ok"


@pytest.mark.skipif(not private_tmpfs_works(), reason="needs unshare -rm and a tmpfs mount")
def test_a_full_disk_names_the_stage_and_file_and_leaves_no_scratch(tmp_path: Path):
    """base_dir is a 40 MB tmpfs (in a private mount namespace): the split outputs fit, the
    merge's scratch does not (kept on disk, as when memory has no room for it)."""
    ntuples = tmp_path / "ntuples"
    make_mock(ntuples, num_jets=60_000, num_files=3, seed=2)
    base = tmp_path / "base"
    base.mkdir()
    config = write_config(base, ntuples)
    script = (f"mount -t tmpfs -o size=40m tmpfs {base} && cd {base} && "
              f"UPP_GRID_SCRATCH_MEMORY=0 PYTHONPATH={REPO} {sys.executable} -m upp_grid run "
              f"-c {config} --no-plots; "
              f"echo exit=$?; echo LEFT; find {base} -name '*.tmp-*' -o -name scratch "
              f"-o -name '.sandbox-*'; echo FILES; find {base} -type f | wc -l; df -k {base}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                            text=True, timeout=300, check=False)

    out = result.stdout
    assert "exit=1" in out, out + result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("upp-grid: error")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"upp-grid: error: run: no space left on device writing {base}/")
    assert errors[0].endswith("free some space and rerun (complete outputs are kept, partial "
                              "ones were removed)")
    assert "Traceback" not in result.stderr
    left, rest = out.split("LEFT\n", 1)[1].split("FILES\n", 1)
    assert left.split() == []  # no scratch, no temporary file
    assert int(rest.split()[0]) > 10, errors[0]  # the complete split outputs are kept


def test_a_rerun_removes_what_a_killed_run_left_in_its_own_directories(tmp_path: Path):
    ntuples = tmp_path / "ntuples"
    make_mock(ntuples, num_jets=60_000, num_files=3, seed=2)
    base = tmp_path / "base"
    config = write_config(base, ntuples)
    out, components = base / "output", base / "split-components"
    out.mkdir(parents=True)
    components.mkdir()
    dead = 2**22 + 7  # above pid_max on a default system: no such process
    leftovers = [out / f".histograms.h5.tmp-{dead}", out / f".norm_dict.yaml.tmp-{dead}",
                 components / f".organised-components.yaml.tmp-{dead}"]
    for path in leftovers:
        path.write_bytes(b"\0" * 1000)
    mine = out / "notes.tmp-1.txt"  # not a temporary file of ours: kept
    mine.write_text("keep me")

    result = run_process("run", "-c", str(config), "--no-plots", cwd=tmp_path, timeout=300)

    assert result.returncode == 0, result.stderr
    assert [p for p in leftovers if p.exists()] == []
    assert mine.read_text() == "keep me"
