"""``slocast bench sites``: protocol A over a site and its generated variants.

Each variant (:mod:`slocast.core.variants`) is written to a temporary directory and
run through the same in-process pipeline as ``slocast run`` with a fresh store
(no champion from another run competes), one variant at a time. A benchmark,
not a gate: it reports, per variant and family, the test headline NRMSE next to
persistence's, whether the persistence guard excluded the family, and the P90
coverage per target.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from slocast.core.config import PipelineConfig
from slocast.core.schema import TARGET_COLUMNS
from slocast.core.variants import VARIANTS, generate_variants

P90 = "0.9"


def run_sites(
    train_path: Path,
    test_path: Path,
    *,
    variants: Sequence[str] | None = None,
    models: Sequence[str],
    seed: int = 0,
    config: PipelineConfig | None = None,
    keep_dir: Path | None = None,
    show_progress: bool = False,
    echo=print,
) -> dict:
    from slocast.runtime.inprocess import run_pipeline
    from slocast.settings import RunSettings

    names = list(variants or VARIANTS)
    site = Path(train_path).stem
    base = config or PipelineConfig()
    result: dict = {
        "site": site,
        "seed": seed,
        "recurrent_seeds": base.recurrent_seeds,
        "models": list(models),
        "variants": {},
    }
    saved_uri = os.environ.pop("MLFLOW_TRACKING_URI", None)  # a fresh store per variant
    try:
        with tempfile.TemporaryDirectory(prefix="slocast-bench-sites-") as scratch:
            root = keep_dir or Path(scratch)
            files = generate_variants(train_path, test_path, root / "data", names, site=site)
            for name in names:
                train_file, test_file = files[name]
                started = time.perf_counter()
                needed = max(base.max_gap_rows, VARIANTS[name].max_gap_rows)
                settings = RunSettings(
                    data=train_file,
                    test_data=test_file,
                    models=tuple(models),
                    out=root / "out" / name,
                    seed=seed,
                    config=dataclasses.replace(base, max_gap_rows=needed),
                    task=f"bench-{site}-{name}",
                    home=root / "home" / name,
                )
                run = run_pipeline(settings, show_progress=show_progress)
                summary = summarise(run.report)
                summary["description"] = VARIANTS[name].description
                summary["seconds"] = time.perf_counter() - started
                result["variants"][name] = summary
                echo(format_variant(name, summary))
    finally:
        if saved_uri is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved_uri
    return result


def summarise(report: dict) -> dict:
    """What the benchmark keeps of one run's ``report.json``."""
    persistence = report["models"]["persistence"]["nrmse"]["avg"]
    families = {}
    for name, m in report["models"].items():
        guard = m.get("guard") or {}
        families[name] = {
            "nrmse": m["nrmse"]["avg"],
            "nrmse_down": m["nrmse"]["down"],
            "nrmse_up": m["nrmse"]["up"],
            "vs_persistence": m["nrmse"]["avg"] / persistence,
            "val_vs_persistence": guard.get("ratio"),
            "excluded": bool(guard.get("excluded")),
            "coverage_p90": m["coverage"].get(P90, {}),
            "baseline": bool(m.get("baseline")),
        }
    return {
        "persistence_nrmse": persistence,
        "champion": report["champion"],
        "decision": report["decision"]["reason"],
        "failures": report["failures"],
        "test_windows": report["dataset"]["test_windows"],
        "train_rows": report["dataset"]["train_rows"],
        "empty_rows": report["dataset"]["empty_rows"],
        "families": families,
    }


def format_variant(name: str, summary: dict) -> str:
    head = ["family", "NRMSE", "x pers", "val x pers", "P90 " + "/".join(TARGET_COLUMNS), ""]
    rows = [head]
    ordered = sorted(summary["families"].items(), key=lambda kv: kv[1]["nrmse"])
    for family, f in ordered:
        cov = f["coverage_p90"]
        mark = []
        if family == summary["champion"]:
            mark.append("champion")
        if f["excluded"]:
            mark.append("EXCLUDED")
        if f["baseline"]:
            mark.append("baseline")
        val = f["val_vs_persistence"]
        rows.append(
            [
                family,
                f"{f['nrmse']:.4f}",
                f"{f['vs_persistence']:.2f}",
                "-" if val is None else f"{val:.2f}",
                " / ".join(f"{cov.get(t, float('nan')):.3f}" for t in TARGET_COLUMNS),
                " ".join(mark),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    empty = summary["empty_rows"]
    gaps = (
        ", empty rows " + "/".join(f"{k} {v}" for k, v in empty.items())
        if any(empty.values())
        else ""
    )
    lines = [
        f"== {name}: {summary.get('description', '')} "
        f"({summary['train_rows']} train rows, {summary['test_windows']} test windows{gaps}, "
        f"persistence {summary['persistence_nrmse']:.4f})"
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"decision: {summary['decision']}")
    for family, error in summary["failures"].items():
        lines.append(f"FAILED {family}: {error}")
    return "\n".join(lines)
