"""Task specs: one grid task per input container, one job per input file.

Each sample pattern of the config names one container: the first path component of the
pattern (``user.x.601589.….h5`` or ``user.x.601589.….h5/*.h5``). A pattern whose first
component is a glob is resolved against ``ntuple_dir`` and must match exactly one directory.
A task declares one output per split and component of the samples reading the container, and
runs :data:`ENTRY` on the worker (see ``grid/README.md``).
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

if TYPE_CHECKING:  # the state DB and the CLI's status use the specs without the heavy imports
    from upp_grid.config import Config

log = logging.getLogger(__name__)

ENTRY = "grid/split.sh"
# prun refuses more declared outputs per job unless --unlimitNumOutputs is given
PRUN_MAX_OUTPUTS = 10
# options upp-grid sets itself; passing them after `--` would break the job contract
RESERVED_PRUN_OPTIONS = frozenset({
    "--exec", "--inDS", "--outDS", "--outputs", "--inTarBall", "--outTarBall", "--tmpDir",
    "--noBuild", "--noCompile", "--nFilesPerJob", "--nGBPerJob", "--nEventsPerJob",
    "--useHomeDir", "--workDir",
})


@dataclass(frozen=True)
class OutputSpec:
    """A declared output: the file the job writes and the container prun stores it in."""

    file: str
    container: str


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

    @property
    def in_ds(self) -> str:
        return self.container

    @property
    def scope(self) -> str:
        """The rucio scope of the outputs."""
        return f"user.{self.user}"


def job_command(samples: Sequence[str]) -> str:
    """The worker command; ``%IN`` is replaced by the job's input file on the worker."""
    return shlex.join(["bash", ENTRY, "--samples", ",".join(samples)]) + " %IN"


def check_extra_prun_args(extra: Sequence[str]) -> tuple[str, ...]:
    """Extra prun options given after ``--``, refusing those upp-grid sets itself."""
    for arg in extra:
        if arg.split("=", 1)[0] in RESERVED_PRUN_OPTIONS:
            raise UppGridError(f"prun option {arg.split('=', 1)[0]} after '--' is set by "
                               "upp-grid itself and cannot be overridden")
    return tuple(extra)


def prun_args(container: str, out_ds: str, outputs: Sequence[OutputSpec], command: str,
              extra: Sequence[str]) -> tuple[str, ...]:
    """prun options of a task (the sandbox and tmp dir are added at submission)."""
    args = ["--exec", command, "--inDS", container, "--outDS", out_ds,
            "--outputs", ",".join(o.file for o in outputs),
            "--nFilesPerJob", "1",   # one job per input file
            "--noCompile",           # sandbox > 10 MiB: sources.* (768 MiB) + a build job
            "--forceStaged"]         # copy the input to the worker's disk
    if len(outputs) > PRUN_MAX_OUTPUTS:
        args.append("--unlimitNumOutputs")
    return (*args, *extra)


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
               need_files: bool = False) -> list[TaskSpec]:
    """One task spec per input container, names validated before anything is sent.

    ``need_files``: every container must have local files (the local backend runs them).

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
    specs = [_task_spec(config, c, tuple(s), tuple(sorted(files[c])), tag, user, extra)
             for c, s in samples.items()]
    _check_unique_out_ds(specs)
    return specs


def _task_spec(config: Config, container: str, samples: tuple[str, ...],
               files: tuple[Path, ...], tag: str, user: str, extra: tuple[str, ...]) -> TaskSpec:
    from upp_grid.stages.split import declared_outputs

    out_ds = names.out_ds_name(user, names.parse_container(container), tag)
    names.check_dataset_name(out_ds, user, f"outDS of container '{container}'")
    outputs = tuple(OutputSpec(o.filename, names.output_container(out_ds, o.filename))
                    for o in declared_outputs(config, samples))
    for o in outputs:
        names.check_dataset_name(o.container, user, "output container")
    names.check_dataset_name(names.log_container(out_ds), user, "log container")
    command = job_command(samples)
    return TaskSpec(container, samples, out_ds, outputs, command,
                    prun_args(container, out_ds, outputs, command, extra), files, user)


def _check_unique_out_ds(specs: Sequence[TaskSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.out_ds in seen:
            raise names.DatasetNameError(
                f"containers '{seen[spec.out_ds]}' and '{spec.container}' give the same outDS "
                f"'{spec.out_ds}' (same DSID and tags): submit them with different --tag")
        seen[spec.out_ds] = spec.container
