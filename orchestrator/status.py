"""`sgsweep status DIR`: done / failed / pending per sweep, with the failures' first errors.

Pending counts come from the spec copy `sgsweep run` keeps in DIR/specs/, expanded
exactly as `run` expands it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import plan
from orchestrator.errors import RunError
from orchestrator.record import Damage, DamagedResults, ResultStore
from orchestrator.spec import SpecError, load_spec


@dataclass
class SweepStatus:
    sweep: str
    total: int | None  # None when the spec copy is missing
    ok: int
    failed: int
    errors: list[tuple[int, str]] = field(default_factory=list)  # (count, first line)

    @property
    def pending(self) -> int | None:
        return None if self.total is None else self.total - self.ok - self.failed


def sweep_status(out_dir: str | Path) -> tuple[list[SweepStatus], list[Damage]]:
    """Each sweep's counts from the healthy parts of DIR, and the damaged parts (whose
    trials count as pending: `sgsweep run` sets those parts aside and runs them again)."""
    out_dir = Path(out_dir)
    store = ResultStore(out_dir)
    damaged = store.damage()
    columns = ["trial_id", "sweep", "status", "error"]
    while True:
        try:
            table = store.latest(columns, skip={d.path.name for d in damaged})
            break
        except DamagedResults as exc:  # garbled data behind an intact footer
            damaged += exc.damage
    latest = {row["trial_id"]: row for row in table.to_dict("records")}
    by_sweep: dict[str, list[dict]] = {}
    for row in latest.values():
        by_sweep.setdefault(row["sweep"], []).append(row)
    specs = spec_trial_ids(out_dir)
    statuses = []
    for sweep in sorted(set(by_sweep) | set(specs)):
        expected = specs.get(sweep)
        # a sweep's trials are those its file plans, whichever sweep recorded them first
        # (two sweeps that share configs run into one DIR record the shared trials once)
        rows = (by_sweep.get(sweep, []) if expected is None
                else [row for tid, row in latest.items() if tid in expected])
        ok = sum(r["status"] == "ok" for r in rows)
        failed_rows = [r for r in rows if r["status"] != "ok"]
        errors = Counter((r["error"] or "").splitlines()[0][:200] if r["error"] else "?"
                         for r in failed_rows)
        statuses.append(SweepStatus(
            sweep, len(expected) if expected is not None else None, ok, len(failed_rows),
            [(count, line) for line, count in errors.most_common(5)],
        ))
    return statuses, damaged


def format_status(statuses: list[SweepStatus], out_dir: str | Path | None = None) -> str:
    """The status lines; with `out_dir`, where failed trials' logs are when there are some."""
    lines = []
    for s in statuses:
        pending = "?" if s.pending is None else str(s.pending)
        total = "?" if s.total is None else str(s.total)
        lines.append(f"{s.sweep}: {s.ok} done, {s.failed} failed, {pending} pending "
                     f"(of {total})")
        for count, error in s.errors:
            lines.append(f"  {count} x {error}")
    if out_dir is not None and any(s.failed for s in statuses):
        lines.append(f"tracebacks and output of the failed trials: `sgsweep logs {out_dir} "
                     f"--failed` (files in {Path(out_dir) / 'logs'})")
    return "\n".join(lines)


def spec_trial_ids(out_dir: Path) -> dict[str, set[str] | None]:
    """The trial ids each sweep file kept in DIR/specs/ plans (None where the copy no
    longer loads, e.g. its data moved): what `status` counts and `report` analyses."""
    planned: dict[str, set[str] | None] = {}
    for copy in sorted((Path(out_dir) / "specs").glob("*.yaml")):
        try:
            planned[copy.stem] = {t.trial_id for b in plan.expand(load_spec(copy))
                                  for t in b.trials}
        except SpecError:
            planned[copy.stem] = None
    return planned


def failed_logs(out_dir: str | Path) -> list[tuple[str, str]]:
    """(trial id, log text) of every trial whose latest attempt failed, in trial id order;
    a failure without a log file (e.g. from before logs were kept) gets its error line."""
    store = ResultStore(out_dir)
    latest = store.latest(["trial_id", "status", "error"])
    failed = latest[latest.status != "ok"].sort_values("trial_id")
    return [(row.trial_id, trial_log_text(store, row.trial_id, row.error))
            for row in failed.itertuples()]


def trial_log(out_dir: str | Path, trial_id: str) -> str:
    """`sgsweep logs DIR TRIAL_ID`: the trial's log; `RunError` (one line) for an id DIR
    does not hold, or a trial whose latest attempt succeeded."""
    store = ResultStore(out_dir)
    latest = store.latest(["trial_id", "status", "error"])
    row = latest[latest.trial_id == trial_id]
    if row.empty:
        raise RunError(f"{out_dir}: no trial {trial_id!r} recorded (`sgsweep status "
                       f"{out_dir}` counts them; failed ones: `sgsweep logs {out_dir} --failed`)")
    if row.status.iloc[0] == "ok":
        raise RunError(f"trial {trial_id}: its latest attempt succeeded; logs are kept for "
                       "failed trials only")
    return trial_log_text(store, trial_id, row.error.iloc[0])


def trial_log_text(store: ResultStore, trial_id: str, error: str | None) -> str:
    path = store.log_path(trial_id)
    if path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    return (f"trial {trial_id} failed: {error}\n(no log file {path}: its failure was "
            "recorded before sgsweep kept logs)\n")
