"""The sandbox: what goes in (runtime packages, grid/, config, manifest), what never does
(credentials, caches, tests, build-only packages), and that it is deterministic."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from upp_grid.grid import sandbox as sandboxes

CREATED = "2026-01-01T00:00:00+00:00"
SITE = "env/lib/python3.11/site-packages"


def write(path: Path, text: str = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dist(site: Path, name: str, files: dict[str, str], requires: tuple[str, ...] = ()) -> None:
    """A minimal installed distribution: METADATA with Requires-Dist, and RECORD."""
    info = f"{name.replace('-', '_')}-1.0.dist-info"
    for rel, text in files.items():
        write(site / rel, text)
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    write(site / info / "METADATA", "\n".join(meta) + "\n")
    record = [*files, f"{info}/METADATA", f"{info}/RECORD"]
    write(site / info / "RECORD", "".join(f"{r},,\n" for r in record))


@pytest.fixture
def inputs(tmp_path: Path) -> sandboxes.SandboxInputs:
    """A small but complete venv layout, a grid/ dir and a package, with planted credentials."""
    base = write(tmp_path / "base" / "bin" / "python3.11", "#!base interpreter\n")
    base.chmod(0o755)
    env = tmp_path / "env"
    write(env / "pyvenv.cfg", f"home = {base.parent}\nversion = 3.11.7\n")
    (env / "bin").mkdir()
    (env / "bin" / "python3").symlink_to(base)
    (env / "bin" / "python").symlink_to("python3")
    write(env / "bin" / "activate")
    (env / "lib64").symlink_to("lib")
    site = env / "lib" / "python3.11" / "site-packages"
    dist(site, "upp-grid", {"upp_grid/__init__.py": "old\n"},
         ("numpy>=1", "panda-client", 'pytest; extra == "test"'))
    dist(site, "numpy", {"numpy/__init__.py": "", "numpy/core.py": "",
                         "numpy/tests/test_core.py": "",
                         "numpy/__pycache__/core.cpython-311.pyc": "",
                         "numpy.libs/libopenblas.so": "blas"})
    dist(site, "panda-client", {"pandaclient/__init__.py": ""})
    dist(site, "pytest", {"pytest/__init__.py": ""})
    dist(site, "matplotlib", {"matplotlib/__init__.py": ""})
    dist(site, "hdf5plugin", {"hdf5plugin/plugins/libh5blosc.so": "",
                              "hdf5plugin/plugins/libh5sz3.so": ""})
    with (site / "upp_grid-1.0.dist-info" / "METADATA").open("a") as f:
        f.write("Requires-Dist: hdf5plugin\n")
    write(site / "certifi" / "cacert.pem")
    # credentials planted wherever they could be picked up
    for where in (env, site, site / "numpy", tmp_path / "grid"):
        write(where / "x509up_u1000")
        write(where / ".globus" / "usercert.pem")
        write(where / ".globus" / "userkey.pem")
        write(where / "token")
        write(where / "access_token")
        write(where / ".token")
    write(tmp_path / "grid" / "split.sh", "#!/bin/bash\n").chmod(0o755)
    write(tmp_path / "grid" / "README.md")
    write(tmp_path / "grid" / "__pycache__" / "x.pyc")
    write(tmp_path / "grid" / ".git" / "config")
    package = tmp_path / "pkg" / "upp_grid"
    write(package / "__init__.py", "new\n")
    write(package / "grid" / "job.py")
    write(package / "__pycache__" / "x.cpython-311.pyc")
    return sandboxes.SandboxInputs(env, tmp_path / "grid", package, "variables: {}\n", "abc123")


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def content(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def test_sandbox_holds_env_grid_config_and_manifest_and_never_a_credential(inputs, tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    names = set(members(info.path))
    for name in names:
        base = name.rsplit("/", 1)[-1]
        assert not sandboxes.is_credential(base), name
        assert not any(part.startswith(".") or part in ("__pycache__", "tests")
                       for part in name.split("/")), name
    assert {"grid/split.sh", "grid/README.md", "config.yaml", "manifest.json",
            "env/pyvenv.cfg", "env/bin/python3", "env/bin/python", f"{SITE}/numpy/core.py",
            f"{SITE}/numpy.libs/libopenblas.so", f"{SITE}/upp_grid/grid/job.py",
            f"{SITE}/hdf5plugin/plugins/libh5blosc.so"} <= names
    # build-only and submit-only packages, lossy codecs, scripts and the lib64 link stay out
    for absent in ("pandaclient", "pytest", "matplotlib", "hdf5plugin/plugins/libh5sz3.so",
                   "certifi/cacert.pem"):
        assert f"{SITE}/{absent}" not in names
    assert not {"env/bin/activate", "env/lib64", "env/x509up_u1000"} & names
    assert {"grid/x509up_u1000", "grid/token", "grid/access_token", "grid/.token",
            "grid/.globus"} <= set(info.skipped_credentials)
    manifest = json.loads(content(info.path, "manifest.json"))
    assert manifest["config_hash"] == "abc123" and manifest["created"] == CREATED
    assert content(info.path, "config.yaml") == b"variables: {}\n"
    assert content(info.path, f"{SITE}/upp_grid/__init__.py") == b"new\n"  # the running code


def test_without_upp_grid_installed_all_site_packages_go_in_but_no_credential(inputs,
                                                                              tmp_path):
    for path in sorted((inputs.env_dir / "lib").glob("python3.11/site-packages/upp_grid-*/*")):
        path.unlink()

    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    names = set(members(info.path))
    assert {f"{SITE}/matplotlib/__init__.py", f"{SITE}/pytest/__init__.py"} <= names
    assert not {n for n in names if sandboxes.is_credential(n.rsplit("/", 1)[-1])}
    assert f"{SITE}/x509up_u1000" in info.skipped_credentials
    assert f"{SITE}/numpy/tests/test_core.py" not in names


def test_interpreter_is_dereferenced_and_inner_links_stay_links(inputs, tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    found = members(info.path)
    assert found["env/bin/python3"].isfile() and found["env/bin/python3"].mode == 0o755
    assert content(info.path, "env/bin/python3") == b"#!base interpreter\n"
    assert found["env/bin/python"].issym() and found["env/bin/python"].linkname == "python3"
    assert sandboxes.base_python(inputs.env_dir) == str(tmp_path / "base" / "bin")


def test_same_inputs_give_the_same_bytes_and_member_list(inputs, tmp_path):
    a = sandboxes.ensure_sandbox(inputs, tmp_path / "a", created=CREATED)
    b = sandboxes.ensure_sandbox(inputs, tmp_path / "b", created=CREATED)
    later = sandboxes.ensure_sandbox(inputs, tmp_path / "c", created="2027-02-02T00:00:00+00:00")

    assert a.path.read_bytes() == b.path.read_bytes()
    assert list(members(a.path)) == list(members(later.path)) == sorted(members(a.path))
    for name, member in members(later.path).items():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            sandboxes.FIXED_MTIME, 0, 0, "", "")
        if member.isfile() and name != "manifest.json":
            assert content(later.path, name) == content(a.path, name)
    header = a.path.read_bytes()[:10]
    assert header[4:8] == b"\0\0\0\0" and not header[3] & 0x08  # no gzip time, no file name
    with gzip.open(a.path) as gz, tarfile.open(fileobj=io.BytesIO(gz.read())) as tar:
        assert tar.getnames() == list(members(a.path))


def test_unchanged_inputs_reuse_the_sandbox_and_a_change_rebuilds_it(inputs, tmp_path):
    first = sandboxes.ensure_sandbox(inputs, tmp_path / "out")
    again = sandboxes.ensure_sandbox(inputs, tmp_path / "out")
    job = inputs.package_dir / "grid" / "job.py"
    job.write_text("changed\n")
    os.utime(job, ns=(job.stat().st_atime_ns, job.stat().st_mtime_ns + 10**9))
    rebuilt = sandboxes.ensure_sandbox(inputs, tmp_path / "out")

    assert (first.reused, again.reused, rebuilt.reused) == (False, True, False)
    assert again.path.read_bytes() == first.path.read_bytes()
    assert content(rebuilt.path, f"{SITE}/upp_grid/grid/job.py") == b"changed\n"


def test_a_sandbox_above_the_limit_is_refused_with_its_size(inputs, tmp_path):
    with pytest.raises(sandboxes.SandboxError) as err:
        sandboxes.ensure_sandbox(inputs, tmp_path / "out", limit=100)
    message = str(err.value)
    assert "MiB is above PanDA's" in message and "sandbox limit" in message
    assert "\n" not in message


def test_env_is_the_running_venv_unless_upp_grid_env_is_set(inputs, tmp_path):
    assert sandboxes.find_env_dir({"UPP_GRID_ENV": str(inputs.env_dir)}) == inputs.env_dir
    with pytest.raises(sandboxes.SandboxError, match="not a virtualenv"):
        sandboxes.find_env_dir({"UPP_GRID_ENV": str(tmp_path)})
