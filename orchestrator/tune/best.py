"""DIR/best.yaml: the study's best parameters as a sweep file on fresh seeds."""

from __future__ import annotations

from pathlib import Path

from orchestrator.spec import load_spec
from orchestrator.tune.study import atomic_text
from orchestrator.tune_spec import TuneSpec, dump_sweep


def write_best(spec: TuneSpec, out_dir: Path, best) -> Path:
    """DIR/best.yaml: the best trial's parameters on fresh seeds, ready for `sgsweep run`."""
    raw = spec.best_sweep(best.params)
    header = (f"Best of study {spec.name}: Optuna trial {best.number}, "
              f"{spec.objective.aggregate} {spec.objective.metric} ({spec.objective.value}) "
              f"= {best.value:.6g} over tuning seeds {list(spec.seeds)}.\n"
              f"Re-evaluates it on fresh seeds: sgsweep run best.yaml --out DIR")
    path = out_dir / "best.yaml"
    atomic_text(path, dump_sweep(raw, header))
    load_spec(path)  # what we wrote must run
    return path
