"""Task specs: one grid task per input container, jobs of about 10 GB of input each.

Each sample pattern of the config names one container: the first path component of the
pattern (``user.x.601589.….h5`` or ``user.x.601589.….h5/*.h5``). A pattern whose first
component is a glob is resolved against ``ntuple_dir`` and must match exactly one directory.

A task runs :data:`ENTRY` on the worker (see ``grid/README.md``) with ``%IN``, the job's input
files as a comma-separated list of any length, and declares **one** output, ``split.tar``
(:mod:`upp_grid.grid.job_archive`), so no ``--unlimitNumOutputs``. Jobs are sized by
``--nGBPerJob`` (default 10, no prun warning) or ``--nFilesPerJob``; JEDI's scouts may change
the split rule (remove ``nFilesPerJob``) and the worker takes whatever it gets.

The runtime is pinned (:class:`TaskOptions`): ``--architecture @el9`` by default, so the pilot
runs the job in an el9 container, or ``--containerImage IMAGE`` (then ``--noBuild``: a
code-only sandbox under PanDA's 10 MB limit, no build job).
"""

from __future__ import annotations

import glob
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from upp_grid.errors import InputError, UppGridError
from upp_grid.grid import names
from upp_grid.grid.job_archive import ARCHIVE_NAME

if TYPE_CHECKING:  # the state DB and the CLI's status use the specs without the heavy imports
    from upp_grid.config import Config

log = logging.getLogger(__name__)

ENTRY = "grid/split.sh"
DEFAULT_PLATFORM = "el9"
DEFAULT_GB_PER_JOB = 10
#: prun's own bound on the files of one job (``--maxNFilesPerJob`` default, JEDI's nMaxFilesPerJob)
MAX_FILES_PER_JOB = 200
# prun options upp-grid sets itself (by their argparse dest, so any abbreviation or alias of
# them is caught); passing them after `--` would break the job contract
RESERVED_PRUN_DESTS = frozenset({
    "jobParams", "inDS", "outDS", "outputs", "inTarBall", "outTarBall", "tmpDir", "noBuild",
    "noCompile", "nFilesPerJob", "nGBPerJob", "nEventsPerJob", "useHomeDir", "workDir",
    "architecture", "containerImage", "unlimitNumOutputs", "destSE", "forceStaged",
    "noSubmit", "loadJson", "dumpJson", "dumpTaskParams",
})


@dataclass(frozen=True)
class OutputSpec:
    """A declared output: the file the job writes and the container prun stores it in."""

    file: str
    container: str


@dataclass(frozen=True)
class TaskOptions:
    """How the jobs of a submission run: platform or image, job size, destination."""

    platform: str = DEFAULT_PLATFORM  #: ``--architecture @<platform>`` (venv mode)
    container_image: str | None = None  #: ``--containerImage`` (container mode)
    gb_per_job: int | None = DEFAULT_GB_PER_JOB
    files_per_job: int | None = None
    dest_se: str | None = None

    def __post_init__(self) -> None:
        if self.files_per_job is not None and self.gb_per_job not in (None,
                                                                      DEFAULT_GB_PER_JOB):
            raise UppGridError("--gb-per-job and --files-per-job exclude each other")
        if self.files_per_job is not None:
            object.__setattr__(self, "gb_per_job", None)
            if not 1 <= self.files_per_job <= MAX_FILES_PER_JOB:
                raise UppGridError(f"--files-per-job {self.files_per_job}: use 1 to "
                                   f"{MAX_FILES_PER_JOB}")
        if self.gb_per_job is not None and self.gb_per_job < 1:
            raise UppGridError(f"--gb-per-job {self.gb_per_job}: use a positive number")
        if self.container_image is not None and not self.container_image.strip():
            raise UppGridError("--container-image: empty image name")

    @property
    def mode(self) -> str:
        """``container`` or ``venv``."""
        return "container" if self.container_image else "venv"

    @property
    def runtime(self) -> str:
        """What the jobs run on, in words: ``@el9`` or ``image <IMAGE>``."""
        return f"image {self.container_image}" if self.container_image else f"@{self.platform}"

    @property
    def job_size(self) -> str:
        """``10 GB per job`` or ``5 files per job``."""
        if self.files_per_job is not None:
            return f"{self.files_per_job} file{'s' * (self.files_per_job > 1)} per job"
        return f"{self.gb_per_job} GB per job"


@dataclass(frozen=True)
class TaskSpec:
    """Everything needed to run one container's split on any backend."""

    container: str
    samples: tuple[str, ...]
    out_ds: str
    outputs: tuple[OutputSpec, ...]
    command: str
    prun_args: tuple[str, ...]
    files: tuple[Path, ...]
    user: str
    options: TaskOptions = TaskOptions()
    attempt: int = 1

    @property
    def in_ds(self) -> str:
        return self.container

    @property
    def scope(self) -> str:
        """The rucio scope of the outputs."""
        return f"user.{self.user}"


def job_command(samples: Sequence[str]) -> str:
    """The worker command; ``%IN`` is replaced by the job's input files on the worker."""
    return shlex.join(["bash", ENTRY, "--samples", ",".join(samples)]) + " %IN"


def check_extra_prun_args(extra: Sequence[str]) -> tuple[str, ...]:
    """Extra prun options given after ``--``, refusing those upp-grid sets itself.

    Names are resolved with prun's own argument parser (``PrunArgs.build_parser``), which
    accepts unambiguous prefixes: ``--nFilesPerJo=50`` is ``--nFilesPerJob``.
    """
    if not extra:
        return ()
    from pandaclient import PrunArgs

    actions = PrunArgs.build_parser()._option_string_actions
    for arg in extra:
        if not arg.startswith("-") or arg == "--":
            continue
        name = arg.split("=", 1)[0]
        action = actions.get(name)
        if action is None and name.startswith("--"):
            found = {actions[o].dest: o for o in actions if o.startswith(name)}
            if len(found) > 1:
                raise UppGridError(f"prun option {name} after '--' is ambiguous (could be "
                                   f"{', '.join(sorted(found.values()))})")
            action = actions[next(iter(found.values()))] if found else None
        if action is None:
            raise UppGridError(f"prun has no option {name} (given after '--')")
        if action.dest in RESERVED_PRUN_DESTS:
            full = max(action.option_strings, key=len)
            raise UppGridError(f"prun option {name} ({full}) after '--' is set by upp-grid "
                               "itself and cannot be overridden: use submit's own options "
                               "(--platform, --container-image, --gb-per-job, --files-per-job, "
                               "--dest-se)")
    return tuple(extra)


def prun_args(container: str, out_ds: str, outputs: Sequence[OutputSpec], command: str,
              extra: Sequence[str], options: TaskOptions = TaskOptions()) -> tuple[str, ...]:
    """prun options of a task (the sandbox and tmp dir are added at submission)."""
    args = ["--exec", command, "--inDS", container, "--outDS", out_ds,
            "--outputs", ",".join(o.file for o in outputs),
            "--forceStaged",  # copy the inputs to the worker's disk
            "-y"]             # never ask: pandaclient runs without a keyboard
    if options.files_per_job is not None:
        args += ["--nFilesPerJob", str(options.files_per_job)]
    else:
        args += ["--nGBPerJob", str(options.gb_per_job or DEFAULT_GB_PER_JOB)]
    if options.container_image:
        # the image holds the run-time; prun then sends the code-only sandbox with --noBuild
        args += ["--containerImage", options.container_image]
    else:
        # the venv sandbox (> 10 MB): sources.* (768 MiB) + a build job; pinned platform
        args += ["--noCompile", "--architecture", f"@{options.platform}"]
    if options.dest_se:
        args += ["--destSE", options.dest_se]
    return (*args, *extra)


def group_inputs(files: Sequence[Path], options: TaskOptions) -> list[tuple[Path, ...]]:
    """Input files in jobs as JEDI sizes them: ``files_per_job`` files each, or as many files
    as fit in ``gb_per_job`` GiB (at least one, at most :data:`MAX_FILES_PER_JOB`), in order.
    The local backend runs these jobs; on PanDA JEDI decides (and may change it)."""
    if options.files_per_job is not None:
        n = options.files_per_job
        return [tuple(files[i:i + n]) for i in range(0, len(files), n)]
    limit = (options.gb_per_job or DEFAULT_GB_PER_JOB) * 2**30
    jobs: list[tuple[Path, ...]] = []
    current: list[Path] = []
    size = 0
    for path in files:
        nbytes = path.stat().st_size if path.exists() else 0
        if current and (size + nbytes > limit or len(current) >= MAX_FILES_PER_JOB):
            jobs.append(tuple(current))
            current, size = [], 0
        current.append(path)
        size += nbytes
    if current:
        jobs.append(tuple(current))
    return jobs


def resolve_container(ntuple_dir: Path, pattern: str, where: str) -> str:
    """The container a sample pattern names (its first path component, globs resolved)."""
    first = pattern.strip("/").split("/", 1)[0]
    if not glob.has_magic(first):
        return first
    matches = sorted(p.name for p in ntuple_dir.glob(first)
                     if p.is_dir() and not p.name.startswith(".")) if ntuple_dir.is_dir() else []
    if len(matches) != 1:
        found = f"matches {len(matches)} directories" + (f" ({', '.join(matches[:3])})"
                                                         if matches else "")
        raise InputError(f"{where}: pattern '{pattern}' must name one grid container, but "
                         f"{found} under {ntuple_dir}; write the container name in the pattern")
    return matches[0]


def plan_tasks(config: Config, tag: str, user: str, extra_prun_args: Sequence[str] = (),
               need_files: bool = False, options: TaskOptions | None = None,
               attempts: dict[str, int] | None = None) -> list[TaskSpec]:
    """One task spec per input container, names validated before anything is sent.

    ``need_files``: every container must have local files (the local backend runs them).
    ``attempts``: the submission attempt of each container (default 1); attempt ``N > 1``
    gets its own outDS (:func:`upp_grid.grid.names.out_ds_name`).

    Raises
    ------
    DatasetNameError
        A name breaks a grid rule (prefix, characters, length) or two containers give the same
        outDS.
    InputError
        A pattern does not name one container, or (``need_files``) has no local files.
    """
    from upp_grid.inputs import container_files

    names.check_tag(tag)
    extra = check_extra_prun_args(extra_prun_args)
    ntuples = config.global_.ntuple_dir
    samples: dict[str, list[str]] = {}
    files: dict[str, set[Path]] = {}
    for sample in config.samples:
        for pattern in sample.patterns:
            where = f"{config.path}: sample '{sample.name}'"
            container = resolve_container(ntuples, pattern, where)
            samples.setdefault(container, [])
            if sample.name not in samples[container]:
                samples[container].append(sample.name)
            found = container_files(ntuples, pattern) if ntuples.is_dir() else ()
            files.setdefault(container, set()).update(found)
            if need_files and not found:
                raise InputError(f"{where}: pattern '{pattern}' matches no file under {ntuples} "
                                 "(the local backend needs the input files)")
    options = options or TaskOptions()
    attempts = attempts or {}
    specs = [_task_spec(config, c, tuple(s), tuple(sorted(files[c])), tag, user, extra, options,
                        attempts.get(c, 1))
             for c, s in samples.items()]
    _check_unique_out_ds(specs)
    return specs


def _task_spec(config: Config, container: str, samples: tuple[str, ...],
               files: tuple[Path, ...], tag: str, user: str, extra: tuple[str, ...],
               options: TaskOptions, attempt: int) -> TaskSpec:
    from upp_grid.stages.split import declared_outputs

    if not declared_outputs(config, samples):
        raise InputError(f"{config.path}: no component uses sample(s) {', '.join(samples)} "
                         f"of container '{container}'")
    out_ds = names.out_ds_name(user, names.parse_container(container), tag, attempt)
    names.check_dataset_name(out_ds, user, f"outDS of container '{container}'")
    outputs = (OutputSpec(ARCHIVE_NAME, names.output_container(out_ds, ARCHIVE_NAME)),)
    for o in outputs:
        names.check_dataset_name(o.container, user, "output container")
    names.check_dataset_name(names.log_container(out_ds), user, "log container")
    command = job_command(samples)
    return TaskSpec(container, samples, out_ds, outputs, command,
                    prun_args(container, out_ds, outputs, command, extra, options), files, user,
                    options, attempt)


def _check_unique_out_ds(specs: Sequence[TaskSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.out_ds in seen:
            raise names.DatasetNameError(
                f"containers '{seen[spec.out_ds]}' and '{spec.container}' give the same outDS "
                f"'{spec.out_ds}' (same DSID and tags): submit them with different --tag")
        seen[spec.out_ds] = spec.container
