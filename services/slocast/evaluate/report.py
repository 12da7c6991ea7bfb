"""``report.json`` and ``report.html`` for a pipeline run."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from slocast.core.schema import TARGET_COLUMNS

REFERENCES = {
    "persistence (paper setup)": {"PobleSec": 0.983, "LesCorts": 0.291, "ElBorn": 1.026},
    "best published (Perifanis et al. 2023)": {
        "PobleSec": 0.834,
        "LesCorts": 0.310,
        "ElBorn": 0.820,
    },
}


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: JSON has no such
    numbers (Python writes a bare ``NaN`` that strict parsers such as ``jq`` and
    browsers reject). A metric that does not exist, e.g. the NRMSE of a column that
    is 0 all week, is then ``null``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_report(
    report: dict,
    out_dir: Path,
    *,
    test_times: np.ndarray,
    truth: np.ndarray,
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[Path, Path]:
    """Write both files. ``forecasts`` maps a model to (point, P90 upper) at step 1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(json_safe(report), indent=2, sort_keys=True, allow_nan=False))
    html_path = out_dir / "report.html"
    html_path.write_text(render_html(report, test_times, truth, forecasts))
    return json_path, html_path


def results_table(report: dict) -> str:
    """Plain-text table for the terminal."""
    rows = [("model", "NRMSE avg", "down", "up", "cov P90 min..max", "train s", "")]
    for name, m in sorted(report["models"].items(), key=lambda kv: kv[1]["nrmse"]["avg"]):
        cov = m["coverage"].get("0.9", {})
        cov_text = f"{min(cov.values()):.3f}..{max(cov.values()):.3f}" if cov else "-"
        mark = (
            "champion" if name == report["champion"] else ("baseline" if m.get("baseline") else "")
        )
        guard = m.get("guard") or {}
        if guard.get("excluded"):
            mark = f"EXCLUDED: val NRMSE {guard['ratio']:.2f}x persistence (> {guard['limit']:g}x)"
        rows.append(
            (
                name,
                f"{m['nrmse']['avg']:.4f}",
                f"{m['nrmse']['down']:.4f}",
                f"{m['nrmse']['up']:.4f}",
                cov_text,
                f"{m['train_seconds']:.1f}",
                mark,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def render_html(
    report: dict,
    times: np.ndarray,
    truth: np.ndarray,
    forecasts: dict[str, tuple[np.ndarray, np.ndarray]],
) -> str:
    champion = report["champion"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>slocast report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#eee}"
        ".champ{background:#e6ffe6}</style></head><body>",
        "<h1>slocast pipeline report</h1>",
        f"<p>Dataset <code>{html.escape(report['dataset']['id'][:16])}</code>: "
        f"{report['dataset']['train_rows']} training rows, {report['dataset']['test_windows']} test windows. "
        f"Champion: <b>{html.escape(str(champion))}</b>. Decision: {html.escape(report['decision']['reason'])}.</p>",
        _model_table(report),
    ]
    if forecasts:
        parts.append("<h2>Forecast vs actual over the test period (step 1)</h2>")
        parts.append(_img(_forecast_figure(times, truth, forecasts)))
    parts.append("<h2>Coverage per quantile level (test)</h2>")
    parts.append(_img(_coverage_figure(report)))
    parts.append(f"<p>Total {report['timings']['total_seconds']:.1f} s.</p></body></html>")
    return "\n".join(parts)


def _model_table(report: dict) -> str:
    head = (
        ["model", "NRMSE avg", "NRMSE down", "NRMSE up"]
        + [f"cov P90 {t}" for t in TARGET_COLUMNS]
        + ["train s", "guard"]
    )
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for name, m in sorted(report["models"].items(), key=lambda kv: kv[1]["nrmse"]["avg"]):
        cov = m["coverage"].get("0.9", {})
        cells = [name, *(f"{m['nrmse'][k]:.4f}" for k in ("avg", "down", "up"))]
        cells += [f"{cov.get(t, float('nan')):.3f}" for t in TARGET_COLUMNS]
        cells.append(f"{m['train_seconds']:.1f}")
        guard = m.get("guard") or {}
        cells.append(f"excluded: {guard['reason']}" if guard.get("excluded") else "")
        cls = " class='champ'" if name == report["champion"] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def _forecast_figure(
    times: np.ndarray, truth: np.ndarray, forecasts: dict[str, tuple[np.ndarray, np.ndarray]]
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(TARGET_COLUMNS), 1, figsize=(12, 2.2 * len(TARGET_COLUMNS)), sharex=True
    )
    for k, (ax, target) in enumerate(zip(axes, TARGET_COLUMNS, strict=True)):
        ax.plot(times, truth[:, k], color="black", lw=0.6, label="actual")
        for name, (point, upper) in forecasts.items():
            ax.plot(times, point[:, k], lw=0.6, label=f"{name} forecast")
            ax.fill_between(times, point[:, k], upper[:, k], alpha=0.2, label=f"{name} P90 bound")
        ax.set_ylabel(target)
    axes[0].legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig


def _coverage_figure(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, m in report["models"].items():
        levels = sorted(float(q) for q in m["coverage"])
        if not levels:
            continue
        mean_cov = [np.mean(list(m["coverage"][f"{q:g}"].values())) for q in levels]
        ax.plot(levels, mean_cov, marker="o", label=name)
    ax.plot([0.5, 1.0], [0.5, 1.0], color="grey", ls="--", lw=0.8, label="ideal")
    ax.set_xlabel("requested quantile")
    ax.set_ylabel("observed coverage (mean over targets)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _img(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return f"<img alt='chart' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
