"""How long a tag's grid outputs live, and the replication rules that keep them.

Grid outputs land on the SCRATCHDISK of the sites that ran the jobs, where JEDI's rule keeps
them **14 days** (``pandajedi/jediddm/AtlasDDMClient.py``: ``"SCRATCHDISK" in location:
lifetime = 14 * 86400``); then rucio deletes them. ``submit --dest-se`` writes them elsewhere,
``upp-grid replicate`` puts a replication rule on each output container.

* :func:`container_lifetime`: per output container, how many files have replicas on scratch
  disks only, the rules without an expiry that keep it (on the container or its datasets), and
  when the scratch rules expire. REST calls: the listing (two, asked once per source and
  shared with the download), the container's rules, its content, and one per dataset (one
  dataset per task and site).
* :func:`lifetime_warnings`: one line per container at risk, saying when it expires.
* :func:`replicate`: ``RuleClient.add_replication_rule`` per output container, recorded in the
  state DB; an existing rule of the account for the same RSE is reported, not duplicated.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from upp_grid.errors import UppGridError
from upp_grid.grid.rucio import RucioSource, _translate

if TYPE_CHECKING:
    from upp_grid.grid.outputs import TagOutputs
    from upp_grid.grid.state import StateDB

log = logging.getLogger(__name__)

def is_scratch(rse_or_expression: str) -> bool:
    """Whether an RSE (or an RSE expression) is a scratch disk."""
    return "SCRATCHDISK" in rse_or_expression.upper()


@dataclass(frozen=True)
class ContainerLifetime:
    """Where an output container's files are, and what keeps them."""

    scope: str
    container: str
    files: int
    scratch_only: int  #: files whose replicas are all on scratch disks (or have none)
    rses: tuple[str, ...]
    keeping_rules: tuple[str, ...]  #: rules without an expiry, not on a scratch disk
    expires: datetime | None  #: the earliest expiry of a scratch rule (UTC)

    @property
    def at_risk(self) -> bool:
        """Files that rucio deletes with the scratch rule, and no rule keeping them."""
        return self.scratch_only > 0 and not self.keeping_rules


@dataclass(frozen=True)
class RuleResult:
    """One output container's replication rule."""

    container: str
    rule_id: str
    rse: str
    created: bool  #: False: the account's rule existed already


def container_lifetime(source: RucioSource, scope: str, container: str
                       ) -> ContainerLifetime | None:
    """The lifetime of one output container (listed now unless :meth:`RucioSource.list_files`
    listed it already); None if it does not exist."""
    found = source.list_names(scope, container)
    if found is None:
        return None
    name, listed = found
    dids = [f.did for f in listed]
    if not all(d in source.replicas for d in dids):
        source.list_files(scope, name)
    rses = sorted({r for d in dids for r in source.rses(d)})
    scratch_only = sum(1 for d in dids if all(is_scratch(r) for r in source.rses(d)))
    rules = _rules(source, scope, name)
    keeping = tuple(sorted(str(r["id"]) for r in rules if r.get("expires_at") is None
                           and not is_scratch(str(r.get("rse_expression", "")))))
    expiries = [_utc(r["expires_at"]) for r in rules if r.get("expires_at") is not None
                and is_scratch(str(r.get("rse_expression", "")))]
    expires = min(expiries) if expiries else None
    return ContainerLifetime(scope, name, len(dids), scratch_only, tuple(rses), keeping,
                             expires)


def _rules(source: RucioSource, scope: str, name: str) -> list[dict[str, Any]]:
    """The rules on the container and on each of its datasets."""
    dids = source.did_client()
    try:
        rules = list(dids.list_did_rules(scope, name))
        for child in dids.list_content(scope, name):
            if str(child.get("type", "")).upper() in ("DATASET", "DIDTYPE.DATASET"):
                rules += list(dids.list_did_rules(child["scope"], child["name"]))
    except Exception as err:
        raise _translate(err, f"rules of {scope}:{name}") from None
    return rules


def _utc(value: Any) -> datetime:
    """A rule's ``expires_at`` (rucio's client gives naive UTC datetimes) as aware UTC."""
    if not isinstance(value, datetime):
        raise UppGridError(f"unreadable rule expiry from rucio: {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def lifetime_warnings(tag: str, lifetimes: Sequence[ContainerLifetime],
                      now: datetime | None = None) -> list[str]:
    """One line per output container at risk, with its expiry and what to do."""
    now = now or datetime.now(timezone.utc)
    out = []
    for lt in lifetimes:
        if not lt.at_risk:
            continue
        if lt.expires is None:
            when = "they may be deleted at any time (no rule with an expiry found)"
        elif lt.expires <= now:
            when = f"their scratch rule expired on {lt.expires:%Y-%m-%d %H:%M} UTC"
        else:
            days = (lt.expires - now).total_seconds() / 86400
            when = (f"they expire on {lt.expires:%Y-%m-%d %H:%M} UTC, in {days:.1f} days (14 "
                    "days after the jobs finished)")
        out.append(f"{lt.container}: {lt.scratch_only} of {lt.files} files only on scratch disks "
                   f"({', '.join(lt.rses) or 'no replica'}) with no rule keeping them: {when}; "
                   f"keep them with `upp-grid replicate --tag {tag} --rse <RSE>`")
    return out


def tag_lifetimes(outputs: TagOutputs, source: RucioSource) -> list[ContainerLifetime]:
    """The lifetime of every output container of a tag that exists."""
    out = []
    for task in outputs.tasks:
        for spec in task.outputs:
            lifetime = container_lifetime(source, task.scope, spec.container)
            if lifetime is not None:
                out.append(lifetime)
    return out


def tag_lifetime_warnings(outputs: TagOutputs, source: RucioSource, state: StateDB
                          ) -> list[str]:
    """:func:`lifetime_warnings` of a tag's output containers, each check recorded."""
    lines = lifetime_warnings(outputs.tag, tag_lifetimes(outputs, source))
    if lines and outputs.from_state:
        state.add_event(outputs.tag, None, "lifetime", lines[0])
    return lines


def replicate(source: RucioSource, targets: Sequence[tuple[str, str]], rse: str,
              lifetime_days: float | None, comment: str) -> list[RuleResult]:
    """One replication rule to ``rse`` per ``(scope, container)``.

    Raises
    ------
    UppGridError
        A container that does not exist, an RSE expression rucio refuses, or no permission:
        naming the container. Rules made before the error stay (and are reported by a rerun
        as existing).
    """
    from rucio.common.exception import DuplicateRule

    rules = source.rule_client()
    lifetime = None if lifetime_days is None else int(lifetime_days * 86400)
    out = []
    for scope, container in targets:
        found = source.list_names(scope, container)
        if found is None:
            raise UppGridError(f"{scope}:{container}: no such container in rucio (is the task "
                               "finished? see `upp-grid status`)")
        name = found[0]
        try:
            ids = rules.add_replication_rule([{"scope": scope, "name": name}], 1, rse,
                                             lifetime=lifetime, comment=comment)
            out.append(RuleResult(name, str(ids[0]), rse, True))
        except DuplicateRule:
            out.append(RuleResult(name, _existing_rule(source, scope, name, rse), rse, False))
        except Exception as err:
            raise _translate(err, f"replication rule for {scope}:{name} to {rse}") from None
    return out


def _existing_rule(source: RucioSource, scope: str, name: str, rse: str) -> str:
    for rule in source.did_client().list_did_rules(scope, name):
        if rule.get("rse_expression") == rse:
            return str(rule["id"])
    return "?"
