"""Plain-text tables of submissions and tasks, for the CLI to print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from upp_grid.grid.control import StatusReport
    from upp_grid.grid.submit import SubmitResult


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def _files(n: int | None, done: int | None, failed: int | None) -> str:
    if n is None:
        return "-"
    return f"{done or 0}/{n}" + (f" ({failed} failed)" if failed else "")


def format_submit(result: SubmitResult) -> str:
    """The dry-run table, or what was submitted and skipped."""
    lines = []
    if result.sandbox is not None:
        how = "reused" if result.sandbox.reused else "built"
        lines.append(f"sandbox: {result.sandbox.path} ({result.sandbox.size_mib:.1f} MiB, "
                     f"{len(result.sandbox.members)} files, {how})")
    if result.placeholder_user:
        lines.append(f"user: '{result.user}' is a placeholder (no --rucio-user, RUCIO_ACCOUNT "
                     "or PANDA_NICKNAME): the real outDS names use your grid nickname")
    if result.dryrun:
        rows = [(t.spec.container, len(t.spec.files) or "-", t.spec.options.runtime,
                 t.spec.options.job_size, f"{len(t.spec.outputs)} ({t.spec.outputs[0].file})",
                 t.spec.out_ds) for t in result.dryrun]
        lines.append(table(("container", "files", "runs on", "job size", "outputs/job",
                            "outDS"), rows))
        lines.append(f"exec: {result.dryrun[0].spec.command}")
        lines.append(f"dry run: task parameters in {result.dryrun[0].path.parent}; "
                     "nothing was submitted")
        return "\n".join(lines)
    if result.submitted:
        rows = [(t.container, t.jedi_task_id or t.id, t.status,
                 _files(t.n_files, t.n_files_finished, t.n_files_failed), t.out_ds)
                for t in result.submitted]
        lines.append(table(("container", "task", "status", "files", "outDS"), rows))
    for container in result.skipped:
        lines.append(f"skipped (already submitted, use --force to submit again): {container}")
    if not result.submitted:
        lines.append(f"nothing submitted for tag '{result.tag}'")
    return "\n".join(lines)


def format_status(report: StatusReport) -> str:
    """One table per tag; local jobs that failed are listed with their log."""
    if not report.tags:
        return f"no submissions in {report.state_path}"
    blocks = []
    for tag in report.tags:
        sub = tag.submission
        head = f"tag {sub.tag}  backend {sub.backend}  user {sub.user}  config {sub.config_path}"
        rows = [(t.container, t.jedi_task_id or t.id, t.status, t.backend_status or "-",
                 _files(t.n_files, t.n_files_finished, t.n_files_failed),
                 (t.runtime or {}).get("runtime", "-"), t.out_ds)
                for t in tag.tasks]
        block = [head, table(("container", "task", "status", "detail", "files", "runs on",
                              "outDS"), rows)]
        for t in tag.tasks:
            if t.error_dialog:
                block.append(f"  {t.container}: PanDA says: {t.error_dialog}")
        if report.failed_jobs is None:
            for jobs in tag.jobs.values():
                failed = [j for j in jobs if j.state == "failed"]
                if failed:
                    block.append(f"  {len(failed)} failed job(s): see `upp-grid status --tag "
                                 f"{sub.tag} --failed`")
                    break
        blocks.append("\n".join(block))
    if report.failed_jobs is not None:
        rows = [(j.container, j.job, ",".join(j.inputs) or "-", j.error_code, j.diagnostic,
                 j.log) for j in report.failed_jobs]
        blocks.append(table(("container", "job", "inputs", "error", "diagnostic", "log"), rows)
                      if rows else "no failed jobs")
    if report.actions:
        rows = [(a.container, a.task, "accepted" if a.accepted else
                 ("refused" if a.sent else "not sent"), a.message) for a in report.actions]
        blocks.insert(0, table(("container", "task", "answer", "message"), rows))
    return "\n\n".join(blocks)
