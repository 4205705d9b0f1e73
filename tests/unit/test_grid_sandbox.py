"""The sandbox: an allow-list of what the worker needs, a content scan that stops any secret,
a manifest that lists every member with its sha256, deterministic bytes, and safe unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import certifi
import pytest

from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.safe_tar import UnsafeArchiveError

CREATED = "2026-01-01T00:00:00+00:00"
SITE = "env/lib/python3.11/site-packages"
MARKER = b"PLANTED-SECRET"


def write(path: Path, data: str | bytes = "x\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def dist(site: Path, name: str, files: dict[str, str | bytes],
         requires: tuple[str, ...] = ()) -> None:
    """An installed distribution: its files, METADATA with Requires-Dist, and RECORD."""
    info = f"{name.replace('-', '_')}-1.0.dist-info"
    for rel, data in files.items():
        write(site / rel, data)
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    write(site / info / "METADATA", "\n".join(meta) + "\n")
    write(site / info / "direct_url.json", '{"url": "file:///home/someone/upp-grid"}')
    record = [*files, f"{info}/METADATA", f"{info}/RECORD", f"{info}/direct_url.json",
              "../../../bin/upp-grid"]
    write(site / info / "RECORD", "".join(f"{r},,\n" for r in record))


@pytest.fixture(scope="session")
def pem(tmp_path_factory) -> dict[str, bytes]:
    """Real PEM material made by openssl: a key, a user certificate, an RFC 3820 proxy."""
    where = tmp_path_factory.mktemp("pem")
    common = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run([*common, "-keyout", where / "userkey.pem", "-out", where / "usercert.pem",
                    "-subj", "/DC=ch/CN=Jane Doe", "-addext",
                    "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
    subprocess.run([*common, "-keyout", where / "proxykey.pem", "-out", where / "proxy.pem",
                    "-subj", "/DC=ch/CN=Jane Doe/CN=1234", "-addext",
                    "proxyCertInfo=critical,language:id-ppl-inheritAll"], check=True,
                   capture_output=True)
    proxy = (where / "proxy.pem").read_bytes() + (where / "proxykey.pem").read_bytes()
    return {"key": (where / "userkey.pem").read_bytes(),
            "cert": (where / "usercert.pem").read_bytes(),
            "proxy": proxy, "proxy_cert_only": (where / "proxy.pem").read_bytes()}


@pytest.fixture
def inputs(tmp_path: Path) -> sandboxes.SandboxInputs:
    """A venv with upp-grid installed (RECORD), its dependencies and submit-only packages."""
    base = write(tmp_path / "base" / "bin" / "python3.11", "#!base interpreter\n")
    base.chmod(0o755)
    env = tmp_path / "env"
    write(env / "pyvenv.cfg", f"home = {base.parent}\nversion = 3.11.7\n")
    (env / "bin").mkdir()
    (env / "bin" / "python3").symlink_to(base)
    (env / "bin" / "python").symlink_to("python3")
    (env / "bin" / "python3.11").symlink_to("python3")
    write(env / "bin" / "activate")
    (env / "lib64").symlink_to("lib")
    site = env / "lib" / "python3.11" / "site-packages"
    dist(site, "upp-grid", {"upp_grid/__init__.py": "code\n", "upp_grid/grid/__init__.py": "",
                            "upp_grid/resources/flavours.yaml": "bjets: {}\n",
                            "upp_grid/grid/worker_scripts/split.sh": "#!/bin/bash\n"},
         ("numpy>=1", "certifi", "hdf5plugin", "panda-client", 'pytest; extra == "test"'))
    (site / "upp_grid" / "grid" / "worker_scripts" / "split.sh").chmod(0o755)
    dist(site, "numpy", {"numpy/__init__.py": "", "numpy/core.py": "core\n",
                         "numpy/tests/test_core.py": "",
                         "numpy/__pycache__/core.cpython-311.pyc": "",
                         "numpy.libs/libopenblas.so": "blas"})
    dist(site, "certifi", {"certifi/__init__.py": "",
                           "certifi/cacert.pem": Path(certifi.where()).read_bytes()})
    dist(site, "panda-client", {"pandaclient/__init__.py": ""})
    dist(site, "pytest", {"pytest/__init__.py": ""})
    dist(site, "matplotlib", {"matplotlib/__init__.py": ""})
    dist(site, "hdf5plugin", {"hdf5plugin/plugins/libh5blosc.so": "",
                              "hdf5plugin/plugins/libh5sz3.so": ""})
    return sandboxes.SandboxInputs(env, site / "upp_grid", "variables: {}\n", "abc123")


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {m.name: m for m in tar.getmembers()}


def content(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


def all_bytes(path: Path) -> bytes:
    with gzip.open(path) as gz:
        return gz.read()


# ------------------------------------------------------------------------------- allow-list
def test_sandbox_holds_the_allow_list_and_nothing_else(inputs, tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    files = {n for n, m in members(info.path).items() if not m.isdir()}
    assert files == {
        "config.yaml", "manifest.json", "runtime.sh", "grid/split.sh",
        "env/pyvenv.cfg", "env/bin/python", "env/bin/python3", "env/bin/python3.11",
        f"{SITE}/upp_grid/__init__.py", f"{SITE}/upp_grid/grid/__init__.py",
        f"{SITE}/upp_grid/resources/flavours.yaml",
        f"{SITE}/upp_grid/grid/worker_scripts/split.sh",
        f"{SITE}/upp_grid-1.0.dist-info/METADATA", f"{SITE}/upp_grid-1.0.dist-info/RECORD",
        f"{SITE}/numpy/__init__.py", f"{SITE}/numpy/core.py", f"{SITE}/numpy.libs/libopenblas.so",
        f"{SITE}/numpy-1.0.dist-info/METADATA", f"{SITE}/numpy-1.0.dist-info/RECORD",
        f"{SITE}/certifi/__init__.py", f"{SITE}/certifi/cacert.pem",  # a CA bundle: allowed
        f"{SITE}/certifi-1.0.dist-info/METADATA", f"{SITE}/certifi-1.0.dist-info/RECORD",
        f"{SITE}/hdf5plugin/plugins/libh5blosc.so",
        f"{SITE}/hdf5plugin-1.0.dist-info/METADATA", f"{SITE}/hdf5plugin-1.0.dist-info/RECORD"}
    assert content(info.path, "grid/split.sh") == b"#!/bin/bash\n"
    assert members(info.path)["grid/split.sh"].mode == 0o755
    assert content(info.path, "config.yaml") == b"variables: {}\n"


def test_manifest_lists_every_member_with_its_sha256_and_the_copied_interpreter(inputs,
                                                                                 tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    manifest = json.loads(content(info.path, "manifest.json"))
    found = members(info.path)
    files = {n for n, m in found.items() if m.isfile() and n != "manifest.json"}
    assert set(manifest["files"]) == files
    for name in files:
        assert manifest["files"][name] == hashlib.sha256(content(info.path, name)).hexdigest()
    assert manifest["links"] == {"env/bin/python": "python3", "env/bin/python3.11": "python3"}
    assert manifest["base_interpreter"] == {
        "member": "env/bin/python3", "copied_from": str(tmp_path / "base" / "bin" / "python3.11")}
    assert (manifest["config_hash"], manifest["created"]) == ("abc123", CREATED)
    assert content(info.path, "env/bin/python3") == b"#!base interpreter\n"
    assert found["env/bin/python3"].mode == 0o755


def plant(tmp_path: Path, inputs: sandboxes.SandboxInputs, pem: dict[str, bytes]
          ) -> list[Path]:
    """Credentials of 36 kinds where an older sandbox picked them up: by name in the
    worker-scripts directory, env/bin, env/, site-packages and the installed package, and
    through innocent-looking links to a key and a proxy. Each holds a marker."""
    env = inputs.env_dir
    site = env / "lib" / "python3.11" / "site-packages"
    scripts = inputs.package_dir / "grid" / "worker_scripts"
    home = tmp_path / "home"
    key = write(home / ".globus" / "userkey.pem", pem["key"] + MARKER)
    proxy = write(tmp_path / "x509up_u1000", pem["proxy"] + MARKER)
    planted = []
    named = {
        scripts: ["rucio.cfg", "id_rsa", "credentials.json", "token.txt", "access_token.json",
                  "bearer-token", "proxy", "x509up_u1000", ".netrc", "userkey.pem",
                  "usercert.pem", "secrets.yaml", "job.sh"],
        env / "bin": ["python.key", "python3.token", "python-proxy", "id_ed25519",
                      "x509up_u0"],
        env: ["x509up_u1000", ".globus/userkey.pem", "rucio.cfg"],
        site: ["rucio.cfg", "token", "id_rsa", ".pandarc"],
        site / "numpy": ["secret.key", ".netrc", "config.ini"],
        inputs.package_dir: ["rucio.cfg", "id_rsa", "resources/secrets.yaml",
                             "grid/token.py"],
    }
    for where, names in named.items():
        for name in names:
            planted.append(write(where / name, b"password=hunter2 " + MARKER + b"\n"))
    for name, target in (("notes.txt", key), ("job_options.txt", proxy)):
        (scripts / name).symlink_to(target)
        planted.append(scripts / name)
    (inputs.package_dir / "resources" / "grid.yaml").symlink_to(key)
    planted.append(inputs.package_dir / "resources" / "grid.yaml")
    return planted


def test_no_planted_credential_reaches_the_tarball(inputs, tmp_path, pem):
    planted = plant(tmp_path, inputs, pem)
    assert len(planted) >= 34

    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    assert MARKER not in all_bytes(info.path)
    assert b"PRIVATE KEY" not in all_bytes(info.path)
    names = set(members(info.path))
    for path in planted:
        assert not any(n.endswith("/" + path.name) or n == path.name for n in names), path


def scan_error(inputs: sandboxes.SandboxInputs, out: Path) -> str:
    with pytest.raises(sandboxes.SandboxError) as err:
        sandboxes.ensure_sandbox(inputs, out, created=CREATED)
    assert not (out / sandboxes.SANDBOX_NAME).exists()  # nothing built, so nothing uploaded
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("where", "secret", "kind"), [
    ("numpy/core.py", "key", "private key"),  # a key pasted into a harmless name
    ("numpy/core.py", "proxy", "proxy certificate"),  # a whole proxy file
    ("numpy.libs/libopenblas.so", "proxy_cert_only", "proxy certificate"),
    ("upp_grid/resources/flavours.yaml", "cert", "certificate"),
    ("upp_grid/resources/flavours.yaml", "password", "password"),
    ("upp_grid/grid/__init__.py", "jwt", "JSON web token"),
    ("certifi/__init__.py", "bearer", "bearer token"),
])
def test_content_scan_stops_the_build_naming_the_file_and_the_secret(inputs, tmp_path, pem,
                                                                      where, secret, kind):
    texts = {**pem, "password": b"  password: hunter2xyz\n",
             "jwt": b"TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqZG9lIn0.c2lnbmF0dXJlLXZhbHVl'\n",
             "bearer": b"# curl -H 'Authorization: Bearer 0123456789abcdefghijABCDEFGHIJ'\n"}
    path = inputs.env_dir / "lib" / "python3.11" / "site-packages" / where
    path.write_bytes(b"# harmless\n" + texts[secret])

    message = scan_error(inputs, tmp_path / "out")

    assert message.startswith(f"{path}:2: {kind} found")
    assert "nothing was built or uploaded" in message


def test_a_password_in_the_config_stops_the_build(inputs, tmp_path):
    inputs = sandboxes.SandboxInputs(inputs.env_dir, inputs.package_dir,
                                     "global:\n  rucio_password: hunter2xyz\n", "abc")
    assert scan_error(inputs, tmp_path / "out").startswith("config.yaml:2: password found")


def test_a_shipped_file_replaced_by_a_link_out_is_refused_not_followed(inputs, tmp_path, pem):
    key = write(tmp_path / "home" / ".globus" / "userkey.pem", pem["key"])
    core = inputs.env_dir / "lib" / "python3.11" / "site-packages" / "numpy" / "core.py"
    core.unlink()
    core.symlink_to(key)

    message = scan_error(inputs, tmp_path / "out")

    assert message.startswith(f"{core}: a symbolic link to {key} outside the sandbox")


def test_an_interpreter_that_is_not_the_base_python_is_refused(inputs, tmp_path, pem):
    key = write(tmp_path / "home" / "key", pem["key"])
    (inputs.env_dir / "bin" / "python3").unlink()
    (inputs.env_dir / "bin" / "python3").symlink_to(key)

    message = scan_error(inputs, tmp_path / "out")

    assert f"links to {key}, which is not the base interpreter" in message


def test_without_upp_grid_installed_in_env_the_error_says_how_to_build_it(inputs, tmp_path):
    for path in (inputs.env_dir / "lib" / "python3.11" / "site-packages"
                 / "upp_grid-1.0.dist-info").iterdir():
        path.unlink()
    assert "upp-grid is not installed in this env" in scan_error(inputs, tmp_path / "out")


def test_a_source_tree_ships_its_modules_and_package_data_only(inputs, tmp_path):
    tree = tmp_path / "checkout" / "upp_grid"
    write(tree / "__init__.py", "new\n")
    write(tree / "resources" / "flavours.yaml")
    write(tree / "grid" / "__init__.py")
    write(tree / "grid" / "worker_scripts" / "split.sh", "#!/bin/bash\necho new\n")
    write(tree / "grid" / "worker_scripts" / "notes.txt")
    write(tree / "rucio.cfg")
    write(tree / "__pycache__" / "x.cpython-311.pyc")
    inputs = sandboxes.SandboxInputs(inputs.env_dir, tree, "variables: {}\n", "abc123")

    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    names = {n for n, m in members(info.path).items() if not m.isdir()}
    own = {n.removeprefix(f"{SITE}/") for n in names if n.startswith(f"{SITE}/upp_grid/")}
    assert own == {"upp_grid/__init__.py", "upp_grid/resources/flavours.yaml",
                   "upp_grid/grid/__init__.py", "upp_grid/grid/worker_scripts/split.sh"}
    assert content(info.path, f"{SITE}/upp_grid/__init__.py") == b"new\n"  # the running code
    assert content(info.path, "grid/split.sh") == b"#!/bin/bash\necho new\n"


def test_package_data_patterns_match_setup_cfg():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[2] / "setup.cfg")
    declared = cfg["options.package_data"]["upp_grid"].split()
    from upp_grid.grid.sandbox_members import PACKAGE_DATA

    assert tuple(declared) == PACKAGE_DATA


def test_container_sandbox_is_our_code_scripts_and_config_only(inputs, tmp_path, pem):
    plant(tmp_path, inputs, pem)
    inputs = sandboxes.SandboxInputs(inputs.env_dir, inputs.package_dir, "variables: {}\n",
                                     "abc", sandboxes.container_runtime("/cvmfs/img:1"))

    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    files = {n for n, m in members(info.path).items() if not m.isdir()}
    assert files == {"code/upp_grid/__init__.py", "code/upp_grid/grid/__init__.py",
                     "code/upp_grid/resources/flavours.yaml",
                     "code/upp_grid/grid/worker_scripts/split.sh", "grid/split.sh",
                     "config.yaml", "runtime.sh", "manifest.json"}
    assert MARKER not in all_bytes(info.path)


# ----------------------------------------------------------------------- bytes and reuse
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
    assert a.sha256 == hashlib.sha256(a.path.read_bytes()).hexdigest()


def test_unchanged_inputs_reuse_the_sandbox_and_a_change_rebuilds_it(inputs, tmp_path):
    first = sandboxes.ensure_sandbox(inputs, tmp_path / "out")
    again = sandboxes.ensure_sandbox(inputs, tmp_path / "out")
    core = inputs.package_dir / "__init__.py"
    core.write_text("changed\n")
    os.utime(core, ns=(core.stat().st_atime_ns, core.stat().st_mtime_ns + 10**9))
    rebuilt = sandboxes.ensure_sandbox(inputs, tmp_path / "out")

    assert (first.reused, again.reused, rebuilt.reused) == (False, True, False)
    assert again.path.read_bytes() == first.path.read_bytes()
    assert again.sha256 == first.sha256 != rebuilt.sha256
    assert content(rebuilt.path, f"{SITE}/upp_grid/__init__.py") == b"changed\n"


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


# -------------------------------------------------------------------------------- unpacking
def test_unpack_restores_files_and_links_and_checks_the_manifest(inputs, tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)

    manifest = sandboxes.unpack(info.path, tmp_path / "job")

    assert (tmp_path / "job" / "env" / "bin" / "python").readlink() == Path("python3")
    assert (tmp_path / "job" / "grid" / "split.sh").read_bytes() == b"#!/bin/bash\n"
    assert manifest["config_hash"] == "abc123"


def hostile(path: Path, *infos: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in infos:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(("member", "says"), [
    (entry("../escape.sh"), "points outside the target directory"),
    (entry("/tmp/abs.sh"), "points outside the target directory"),
    (entry("grid/../../up.sh"), "points outside the target directory"),
    (entry("env/key", tarfile.SYMTYPE, "/home/someone/.globus/userkey.pem"), "outside"),
    (entry("grid/up", tarfile.SYMTYPE, "../../outside"), "outside"),
    (entry("grid/hard", tarfile.LNKTYPE, "/etc/passwd"), "is a hard link"),
    (entry("dev/sda", tarfile.BLKTYPE), "is a device or special file"),
    (entry("dev/tty", tarfile.CHRTYPE), "is a device or special file"),
    (entry("fifo", tarfile.FIFOTYPE), "is a device or special file"),
])
def test_hostile_tarballs_are_refused_before_anything_is_extracted(tmp_path, member, says):
    path = hostile(tmp_path / "sandbox.tar.gz", (entry("grid/split.sh"), b"echo ok\n"),
                   (member, b"evil\n"))

    with pytest.raises(UnsafeArchiveError) as err:
        sandboxes.unpack(path, tmp_path / "job")

    assert str(err.value).startswith(f"{path}: member '{member.name}'")
    assert says in str(err.value)
    assert list((tmp_path / "job").iterdir()) == []
    assert not (tmp_path / "escape.sh").exists() and not (tmp_path / "up.sh").exists()


def test_a_tampered_member_fails_the_manifest_check(inputs, tmp_path):
    info = sandboxes.ensure_sandbox(inputs, tmp_path / "out", created=CREATED)
    with tarfile.open(info.path) as tar:
        items = [(m, tar.extractfile(m).read() if m.isfile() else b"")
                 for m in tar.getmembers()]
    items = [(m, b"#!/bin/bash\ncurl evil\n" if m.name == "grid/split.sh" else d)
             for m, d in items]
    tampered = hostile(tmp_path / "tampered.tar.gz", *items)

    with pytest.raises(sandboxes.SandboxError, match=r"grid/split\.sh does not match"):
        sandboxes.unpack(tampered, tmp_path / "job")
