"""``upp-grid submit``: plan the tasks of a config, build the sandbox, then either write the
task parameters (dry run) or hand the tasks to a backend and record them.

Everything for a tag lives under ``<base_dir>/submission/<tag>/``: ``sandbox.tar.gz`` (and
``sandbox.json``, its fingerprint), ``tasks/<container>.json`` (dry run), ``prun/`` (prun's
scratch space) and, for the local backend, ``local/`` (the unpacked sandbox, job directories
and logs). The local backend's outputs go to ``<base_dir>/local-store``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import upp_grid
from upp_grid.config import Config, load_config
from upp_grid.errors import UppGridError
from upp_grid.fsutil import write_json_atomic
from upp_grid.grid import sandbox as sandboxes
from upp_grid.grid.backend import BACKENDS, SETTLED, open_backend
from upp_grid.grid.names import DatasetNameError, resolve_user
from upp_grid.grid.panda_client import dry_run_env, prun_task_params
from upp_grid.grid.state import StateDB, Submission, TaskRecord, default_state_path
from upp_grid.grid.tasks import TaskOptions, TaskSpec, plan_tasks
from upp_grid.yamlload import to_plain

log = logging.getLogger(__name__)

SUBMISSION_DIR = "submission"
LOCAL_STORE_DIR = "local-store"


@dataclass(frozen=True)
class SubmitRequest:
    """What the user asked for (``upp-grid submit`` options)."""

    config_path: Path
    tag: str
    backend: str = "panda"
    rucio_user: str | None = None
    dryrun: bool = False
    force: bool = False
    workers: int | None = None
    extra_prun_args: tuple[str, ...] = ()
    state_path: Path | None = None
    options: TaskOptions = field(default_factory=TaskOptions)
    allow_local_python: bool = False


#: the nickname a dry run uses when none is configured (it is shown as a placeholder)
PLACEHOLDER_USER = "nickname"


@dataclass(frozen=True)
class DryRunTask:
    """A task as it would be submitted, and the file its parameters were written to."""

    spec: TaskSpec
    params: dict
    path: Path


@dataclass
class SubmitResult:
    """What ``submit`` did."""

    tag: str
    backend: str
    submission_dir: Path
    sandbox: sandboxes.SandboxInfo | None = None
    dryrun: list[DryRunTask] = field(default_factory=list)
    submitted: list[TaskRecord] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    state_path: Path | None = None
    user: str = ""
    placeholder_user: bool = False

    @property
    def problem(self) -> str | None:
        """A one-line summary of jobs that failed (local backend), else None."""
        failed = sum(t.n_files_failed or 0 for t in self.submitted)
        total = sum(t.n_files or 0 for t in self.submitted)
        if not failed:
            return None
        return (f"{failed} of {total} jobs failed (see `upp-grid status --tag {self.tag}`); "
                f"fix the cause and run `upp-grid retry --tag {self.tag}`")


def submission_dir(config: Config, tag: str) -> Path:
    return config.global_.base_dir / SUBMISSION_DIR / tag


def config_yaml(config: Config) -> str:
    """The resolved config (includes inlined) as shipped in the sandbox."""
    header = (f"# {config.path.name} resolved by upp-grid {upp_grid.__version__} "
              "(includes inlined)\n")
    return header + yaml.safe_dump(to_plain(dict(config.raw)), sort_keys=False)


def build_sandbox(config: Config, out_dir: Path, *, env_dir: Path | None = None,
                  limit: int | None = sandboxes.SANDBOX_LIMIT,
                  level: int = sandboxes.DEFAULT_LEVEL,
                  options: TaskOptions | None = None) -> sandboxes.SandboxInfo:
    """Build (or reuse) the sandbox of ``config`` in ``out_dir`` for the runtime of
    ``options`` (a venv pinned to its platform, or a container image: code only)."""
    options = options or TaskOptions()
    env = env_dir or sandboxes.find_env_dir()
    runtime = (sandboxes.container_runtime(options.container_image) if options.container_image
               else sandboxes.venv_runtime(env, options.platform))
    inputs = sandboxes.SandboxInputs(env, Path(upp_grid.__file__).parent, config_yaml(config),
                                     config.config_hash, runtime)
    if limit is not None:
        limit = min(limit, inputs.limit)
    info = sandboxes.ensure_sandbox(inputs, out_dir, limit=limit, level=level)
    log.info("sandbox %s: %.1f MiB%s", info.path, info.size_mib, " (reused)" * info.reused)
    return info


def submit(request: SubmitRequest, *, env_dir: Path | None = None,
           level: int = sandboxes.DEFAULT_LEVEL) -> SubmitResult:
    """Plan, build the sandbox and dry-run or submit (see the module docstring).

    Raises
    ------
    UppGridError
        Bad names, config or options, a sandbox over the limit, missing credentials, an
        unreachable server: before anything is recorded as submitted.
    """
    if request.backend not in BACKENDS:
        raise UppGridError(f"unknown --backend '{request.backend}' (use {' or '.join(BACKENDS)})")
    config = load_config(request.config_path)
    placeholder = False
    try:
        user = resolve_user(request.rucio_user, os.environ)
    except DatasetNameError:
        if not request.dryrun or request.rucio_user:
            raise
        user, placeholder = PLACEHOLDER_USER, True
    options = request.options
    if request.backend == "panda" and not options.container_image \
            and not request.allow_local_python:
        try:
            _check_cvmfs_python(env_dir or sandboxes.find_env_dir())
        except UppGridError as err:
            if not request.dryrun:
                raise
            log.warning("%s (a real submission would stop here)", err)
    out_dir = submission_dir(config, request.tag)
    result = SubmitResult(request.tag, request.backend, out_dir, user=user,
                          placeholder_user=placeholder)
    limit = None if request.backend == "local" else sandboxes.SANDBOX_LIMIT

    def sandbox() -> Path:
        result.sandbox = build_sandbox(config, out_dir, env_dir=env_dir, limit=limit,
                                       level=level, options=options)
        return result.sandbox.path

    if request.dryrun:
        specs = plan_tasks(config, request.tag, user, request.extra_prun_args,
                           need_files=request.backend == "local", options=options)
        sandbox()
        result.dryrun = dry_run(specs, user, out_dir)
        return result
    result.state_path = request.state_path or default_state_path(config)
    with StateDB(result.state_path) as state:
        specs = plan_tasks(config, request.tag, user, request.extra_prun_args,
                           need_files=request.backend == "local", options=options,
                           attempts=state.next_attempts(request.tag))
        todo = _todo(state, request, config, specs, result)
        if not todo:
            return result
        local = request.backend == "local"
        submission = Submission(
            request.tag, request.backend, str(config.path.absolute()), config.config_hash, user,
            str(out_dir / sandboxes.SANDBOX_NAME),
            work_dir=str(out_dir / "local") if local else None,
            store_dir=str(config.global_.base_dir / LOCAL_STORE_DIR) if local else None)
        backend = open_backend(request.backend, state, workers=request.workers)
        result.submitted = backend.submit(submission, todo, sandbox)
        done = {t.container for t in result.submitted}
        result.submitted = [t for t in state.tasks(request.tag) if t.container in done]
    return result


def _todo(state: StateDB, request: SubmitRequest, config: Config, specs: Sequence[TaskSpec],
          result: SubmitResult) -> list[TaskSpec]:
    """The specs to submit: those not submitted yet under this tag (all with ``force``)."""
    previous = state.submission(request.tag)
    if previous is not None and request.force and previous.backend == request.backend:
        try:  # decide on the tasks' current state, not the one recorded last
            open_backend(previous.backend, state).refresh(previous)
        except UppGridError as err:
            log.warning("could not refresh the tasks of tag '%s' (%s): using the recorded "
                        "state", request.tag, err)
    if previous is not None and previous.backend != request.backend:
        raise UppGridError(f"tag '{request.tag}' was submitted with --backend "
                           f"{previous.backend}: use another --tag")
    if previous is not None and previous.config_hash != config.config_hash \
            and not request.force:
        raise UppGridError(f"tag '{request.tag}' was submitted with a different config "
                           f"({previous.config_path}): use a new --tag, or --force to "
                           "resubmit with this one")
    tasks = {t.container: t for t in state.tasks(request.tag)}
    if request.force:
        active = [t for c, t in tasks.items() if t.status not in SETTLED
                  and any(s.container == c for s in specs)]
        if active:
            t = active[0]
            name = f"jediTaskID={t.jedi_task_id}" if t.jedi_task_id else f"local task {t.id}"
            raise UppGridError(f"tag '{request.tag}': the task of {t.container} ({name}) is "
                               f"still {t.status}: kill it first (`upp-grid kill --tag "
                               f"{request.tag}`), then submit --force again")
    submitted = set(tasks)
    todo = [s for s in specs if request.force or s.container not in submitted]
    result.skipped = [s.container for s in specs if s not in todo]
    if result.skipped:
        log.info("%d container(s) already submitted under tag '%s' (use --force to submit "
                 "again)", len(result.skipped), request.tag)
    return todo


def _check_cvmfs_python(env_dir: Path) -> None:
    """A venv sandbox runs on the worker only if its base Python is there: under /cvmfs/."""
    home = sandboxes.base_python(env_dir)
    if not home.startswith("/cvmfs/"):
        raise UppGridError(
            f"{env_dir}/pyvenv.cfg: the base Python {home} is not under /cvmfs/, so grid "
            "workers do not have it: rebuild env/ on lxplus with `bash scripts/setup_env.sh "
            "--lsetup \"python 3.11.9-x86_64-el9\"` (see grid/README.md), or submit with "
            "--container-image; --allow-local-python if your sites have that path")


def dry_run(specs: Sequence[TaskSpec], user: str, out_dir: Path) -> list[DryRunTask]:
    """Build every task's real parameters offline and write ``tasks/<container>.json``."""
    tasks_dir = out_dir / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for stale in tasks_dir.glob("*.json"):
        stale.unlink()
    prun_dir = out_dir / "prun"
    out = []
    for spec in specs:
        args = [*spec.prun_args, "--tmpDir", str(prun_dir)]
        params = prun_task_params(args, prun_dir, dry_run=True, env=dry_run_env(user))
        path = tasks_dir / f"{spec.container}.json"
        write_json_atomic(path, {
            "container": spec.container, "in_ds": spec.in_ds, "out_ds": spec.out_ds,
            "samples": list(spec.samples), "command": spec.command,
            "outputs": [{"file": o.file, "container": o.container} for o in spec.outputs],
            "files": [str(f) for f in spec.files], "prun_args": list(spec.prun_args),
            "sandbox": str(out_dir / sandboxes.SANDBOX_NAME), "task_params": params})
        out.append(DryRunTask(spec, params, path))
    return out
