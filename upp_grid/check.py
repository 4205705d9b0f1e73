"""``upp-grid check``: validate a config against its inputs and describe the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from upp_grid.config import Config
from upp_grid.errors import InputError
from upp_grid.input_types import FieldTypes
from upp_grid.inputs import Container, check_file, field_roles, find_containers, required_fields


@dataclass(frozen=True)
class ContainerReport:
    container: Container
    jets_per_file: tuple[int, ...]

    @property
    def num_jets(self) -> int:
        return sum(self.jets_per_file)


@dataclass(frozen=True)
class CheckReport:
    """What ``check`` found: containers with their files and jet counts, and any problems."""

    containers: tuple[ContainerReport, ...]
    problems: tuple[str, ...]
    nonfinite: dict[str, int] = field(default_factory=dict)  # NaN/inf in the first chunks


def check_inputs(config: Config) -> CheckReport:
    """Check every input file of every container has the datasets and fields the config needs,
    of the right shapes and kinds, with data that decodes, and that each field has one kind in
    every input (:mod:`upp_grid.input_types`).

    Problems are collected (one line each, naming file and field) rather than raised, so the
    user sees all of them at once. A pattern that matches nothing raises immediately.
    """
    need = required_fields(config)
    roles = field_roles(config)
    types = FieldTypes()
    nonfinite: dict[str, int] = {}
    reports, problems = [], []
    for container in find_containers(config):
        counts = []
        for path in container.files:
            try:
                counts.append(check_file(Path(path), need, roles, types, config.jets_name,
                                         nonfinite))
            except InputError as err:
                problems.append(str(err))
                counts.append(0)
        reports.append(ContainerReport(container, tuple(counts)))
    if config.global_.nan_policy == "error":
        problems += [f"{key}: {n} NaN/inf values in the first chunks of the inputs "
                     "(global.nan_policy: error)" for key, n in sorted(nonfinite.items())
                     if key.partition(".")[2] in _training_variables(config, key)]
    return CheckReport(tuple(reports), tuple(problems), nonfinite)


def _training_variables(config: Config, key: str) -> tuple[str, ...]:
    """The training variables of ``key``'s group that pass NaN on: a jet with NaN in a cut or
    jets reweight variable goes to no component instead (the split counts it)."""
    group = key.partition(".")[0]
    if group not in config.variables:
        return ()
    guarded = field_roles(config).numbers.get(group, frozenset()) \
        if group == config.jets_name else frozenset()
    return tuple(v for v in config.variables[group].inputs if v not in guarded)
