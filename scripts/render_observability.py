"""Write the generated files of manifests/components/observability.

- ``prometheusrule.yaml``: the PrometheusRule of the Prometheus operator, whose
  ``spec`` is exactly ``rules.yaml`` (the file promtool checks and tests);
- ``dashboards/*.json``: the Grafana dashboards, defined below.

``python scripts/render_observability.py`` rewrites them; ``--check`` exits 1 when a
committed file differs (tests/k8s/test_observability.py asserts the same).
Every PromQL expression may only name metrics the code exports (tested).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

COMPONENT = Path(__file__).resolve().parents[1] / "manifests" / "components" / "observability"
RULES = COMPONENT / "rules.yaml"
PROMETHEUS_RULE = COMPONENT / "prometheusrule.yaml"
DASHBOARDS = COMPONENT / "dashboards"

NS = 'namespace="$namespace"'
RATE = "$__rate_interval"


# ---------------------------------------------------------------- PrometheusRule


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, as in rules.yaml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def prometheus_rule() -> str:
    spec = yaml.safe_load(RULES.read_text())
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "slocast",
            "labels": {
                "app.kubernetes.io/name": "slocast",
                "app.kubernetes.io/component": "slocast",
            },
        },
        "spec": spec,
    }
    header = (
        "# Generated from rules.yaml by scripts/render_observability.py; do not edit by hand.\n"
    )
    return header + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=100)


# ---------------------------------------------------------------- dashboards


class Dashboard:
    def __init__(self, uid: str, title: str, description: str, variable_metric: str) -> None:
        self.uid = uid
        self.title = title
        self.description = description
        self.variable_metric = variable_metric
        self.panels: list[dict] = []
        self._y = 0
        self._x = 0
        self._row_height = 0

    def _next_id(self) -> int:
        return len(self.panels) + 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "id": self._next_id(),
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self._y},
                "panels": [],
            }
        )
        self._y += 1

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x = 0
            self._row_height = 0

    def panel(
        self,
        title: str,
        targets: list[tuple[str, str]],
        *,
        unit: str = "short",
        kind: str = "timeseries",
        width: int = 12,
        height: int = 8,
        description: str = "",
        thresholds: list[tuple[str, float | None]] | None = None,
        instant: bool = False,
        extra: dict | None = None,
    ) -> None:
        if self._x + width > 24:
            self._newline()
        steps = [{"color": c, "value": v} for c, v in (thresholds or [("green", None)])]
        panel = {
            "id": self._next_id(),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": height, "w": width, "x": self._x, "y": self._y},
            "fieldConfig": {
                "defaults": {
                    "unit": unit,
                    "thresholds": {"mode": "absolute", "steps": steps},
                },
                "overrides": [],
            },
            "options": {},
            "targets": [
                {
                    "refId": chr(ord("A") + i),
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "expr": expr,
                    "legendFormat": legend,
                    **({"instant": True, "range": False, "format": "table"} if instant else {}),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if thresholds and kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {"thresholdsStyle": {"mode": "line"}}
        if extra:
            panel.update(extra)
        self.panels.append(panel)
        self._x += width
        self._row_height = max(self._row_height, height)

    def to_json(self) -> dict:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["slocast"],
            "timezone": "browser",
            "editable": True,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {
                "list": [
                    {
                        "name": "datasource",
                        "label": "Prometheus",
                        "type": "datasource",
                        "query": "prometheus",
                    },
                    {
                        "name": "namespace",
                        "label": "Namespace",
                        "type": "query",
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "query": f"label_values({self.variable_metric}, namespace)",
                        "refresh": 2,
                        "sort": 1,
                    },
                ]
            },
            "annotations": {"list": []},
            "panels": self.panels,
        }


def serving() -> Dashboard:
    d = Dashboard(
        "slocast-serving",
        "slocast / serving",
        "LTE forecast server (service predict) and LLM latency predictor: traffic, "
        "latency, errors, engines and fallbacks.",
        "slocast_http_requests_total",
    )
    d.row("LTE forecast server")
    d.panel(
        "Requests by route and status",
        [
            (
                f"sum by (route, status) (rate(slocast_http_requests_total{{{NS}}}[{RATE}]))",
                "{{route}} {{status}}",
            )
        ],
        unit="reqps",
    )
    d.panel(
        "Server-side latency p50 / p99",
        [
            (
                f"histogram_quantile({q}, sum by (le, route) "
                f"(rate(slocast_http_request_duration_seconds_bucket{{{NS}}}[{RATE}])))",
                f"p{round(q * 100)} {{{{route}}}}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
        description="From request start to the last response byte handed to the server.",
    )
    d.panel(
        "Error ratio (5xx, 4xx)",
        [
            (
                f'sum by (route) (rate(slocast_http_requests_total{{{NS}, status=~"{c}.."}}'
                f"[{RATE}])) / sum by (route) (rate(slocast_http_requests_total{{{NS}}}[{RATE}]))",
                f"{c}xx {{{{route}}}}",
            )
            for c in ("5", "4")
        ],
        unit="percentunit",
        thresholds=[("green", None), ("red", 0.01)],
    )
    d.panel(
        "Forecast handler service time p50 / p99",
        [
            (
                f"histogram_quantile({q}, sum by (le, route) "
                f"(rate(slocast_forecast_handler_seconds_bucket{{{NS}}}[{RATE}])))",
                f"p{round(q * 100)} {{{{route}}}}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
        description="CPU-bound time of a forecast (parse, validate, predict, serialise).",
    )
    d.panel(
        "Forecast windows by engine",
        [
            (
                f"sum by (engine) (rate(slocast_predictions_total{{{NS}}}[{RATE}]))",
                "{{engine}}",
            )
        ],
        unit="ops",
        description="native: the C request kernel; tl2cgen / xgboost / onnxruntime / numpy: "
        "the Python path with that engine. xgboost for an XGBoost champion everywhere "
        "means its compiled trees did not load (fallback).",
    )
    d.panel(
        "Served model per pod",
        [
            (
                f"max by (pod, task, version, family, engine) (slocast_model_info{{{NS}}} == 1)",
                "",
            )
        ],
        kind="table",
        instant=True,
    )
    d.panel(
        "Fallbacks, rejected libraries, load failures (1h)",
        [
            (f"sum(increase(slocast_engine_fallbacks_total{{{NS}}}[1h]))", "engine fallbacks"),
            (
                f"sum(increase(slocast_compiled_libraries_rejected_total{{{NS}}}[1h]))",
                "compiled libraries rejected",
            ),
            (
                f"sum(increase(slocast_compiled_libraries_built_total{{{NS}}}[1h]))",
                "compiled in the pod",
            ),
            (
                f"sum(increase(slocast_model_load_failures_total{{{NS}}}[1h]))",
                "champion load failures",
            ),
        ],
        thresholds=[("green", None), ("orange", 1)],
    )
    d.panel(
        "Reloads by outcome (1h)",
        [
            (
                f"sum by (outcome) (increase(slocast_model_reloads_total{{{NS}}}[1h]))",
                "{{outcome}}",
            )
        ],
    )
    d.row("LLM latency predictor")
    d.panel(
        "Prediction requests by endpoint and status",
        [
            (
                "sum by (endpoint, status) "
                f"(rate(slocast_latency_prediction_requests_total{{{NS}}}[{RATE}]))",
                "{{endpoint}} {{status}}",
            )
        ],
        unit="reqps",
    )
    d.panel(
        "Candidate rows predicted",
        [(f"sum(rate(slocast_latency_predicted_rows_total{{{NS}}}[{RATE}]))", "rows/s")],
        unit="ops",
    )
    d.panel(
        "Latency predictor error ratio (5xx, 4xx)",
        [
            (
                "sum by (endpoint) (rate(slocast_latency_prediction_requests_total"
                f'{{{NS}, status=~"{c}.."}}[{RATE}])) / sum by (endpoint) '
                f"(rate(slocast_latency_prediction_requests_total{{{NS}}}[{RATE}]))",
                f"{c}xx {{{{endpoint}}}}",
            )
            for c in ("5", "4")
        ],
        unit="percentunit",
        thresholds=[("green", None), ("red", 0.01)],
    )
    d.panel(
        "Engines in use per pod",
        [
            (
                "count by (pod, version, ttft_engine, tpot_engine) "
                f"(slocast_latency_model_loaded_timestamp{{{NS}}})",
                "",
            )
        ],
        kind="table",
        instant=True,
        description="native(-avx2): the forest kernel; xgboost: SLOCAST_LATENCY_ENGINE=xgboost "
        "or the fallback; prior: the cold-start prior.",
    )
    d.panel(
        "Workers on the cold-start prior / load errors",
        [
            (f"sum by (pod) (slocast_latency_model_cold{{{NS}}})", "cold {{pod}}"),
            (f"max by (pod) (slocast_latency_model_load_errors{{{NS}}})", "load errors {{pod}}"),
        ],
        thresholds=[("green", None), ("orange", 1)],
    )
    return d


def pipeline() -> Dashboard:
    d = Dashboard(
        "slocast-pipeline",
        "slocast / pipeline",
        "Kafka services (preprocess, trainers, evaluator) and the latency training server: "
        "messages, dead letters, consumer lag, training time, decisions and promotions.",
        "slocast_pipeline_messages_total",
    )
    d.row("Kafka consumers")
    d.panel(
        "Messages by service and outcome (1h)",
        [
            (
                "sum by (service, outcome) "
                f"(increase(slocast_pipeline_messages_total{{{NS}}}[1h]))",
                "{{service}} {{outcome}}",
            )
        ],
    )
    d.panel(
        "Dead-lettered messages (24h)",
        [
            (
                "sum by (service, topic) (increase(slocast_pipeline_messages_total"
                f'{{{NS}, outcome="dead_lettered"}}[24h]))',
                "{{service}} -> {{topic}}.dlq",
            )
        ],
        thresholds=[("green", None), ("red", 1)],
        description="Messages this deployment wrote to <topic>.dlq: retries exhausted or a "
        "permanent error (malformed event, invalid data).",
    )
    d.panel(
        "Consumer lag",
        [
            (
                f"max by (service, topic) (slocast_pipeline_consumer_lag{{{NS}}})",
                "{{service}} {{topic}}",
            )
        ],
        description="High watermark minus the committed offset of the service's group, read "
        "between messages (a message being handled counts until it is committed).",
    )
    d.panel(
        "Time per message p50 / p99",
        [
            (
                f"histogram_quantile({q}, sum by (le, service) "
                f"(rate(slocast_pipeline_handler_seconds_bucket{{{NS}}}[1h])))",
                f"p{round(q * 100)} {{{{service}}}}",
            )
            for q in (0.5, 0.99)
        ],
        unit="s",
    )
    d.row("Training")
    d.panel(
        "Mean training time by family (6h)",
        [
            (
                f"sum by (family) (increase(slocast_trainer_training_seconds_sum{{{NS}}}[6h])) "
                "/ sum by (family) "
                f"(increase(slocast_trainer_training_seconds_count{{{NS}}}[6h]))",
                "{{family}}",
            )
        ],
        unit="s",
    )
    d.panel(
        "Trainings by family and outcome (24h)",
        [
            (
                "sum by (family, outcome) "
                f"(increase(slocast_trainer_trainings_total{{{NS}}}[24h]))",
                "{{family}} {{outcome}}",
            )
        ],
    )
    d.row("Evaluator")
    d.panel(
        "Decisions by task (24h)",
        [
            (
                "sum by (task, promoted, trigger) "
                f"(increase(slocast_evaluator_decisions_total{{{NS}}}[24h]))",
                "{{task}} promoted={{promoted}} ({{trigger}})",
            )
        ],
        width=8,
    )
    d.panel(
        "Promotions by task and family (24h)",
        [
            (
                "sum by (task, family) "
                f"(increase(slocast_evaluator_promotions_total{{{NS}}}[24h]))",
                "{{task}} {{family}}",
            )
        ],
        width=8,
    )
    d.panel(
        "Time since the last promotion",
        [
            (
                "time() - max by (task) "
                f"(slocast_evaluator_last_promotion_timestamp_seconds{{{NS}}})",
                "{{task}}",
            )
        ],
        unit="s",
        kind="stat",
        width=8,
        description="Applied by the running evaluator (empty after a restart until it "
        "promotes again).",
    )
    d.row("Latency training server")
    d.panel(
        "Samples accepted and rejected",
        [
            (
                f"sum(rate(slocast_latency_samples_accepted_total{{{NS}}}[{RATE}]))",
                "accepted samples/s",
            ),
            (
                f"sum by (reason) (rate(slocast_latency_requests_rejected_total{{{NS}}}[{RATE}]))",
                "rejected requests/s ({{reason}})",
            ),
        ],
        unit="ops",
    )
    d.panel(
        "Training window",
        [
            (
                f"sum by (target, split) (slocast_latency_window_samples{{{NS}}})",
                "{{target}} {{split}}",
            )
        ],
    )
    d.panel(
        "Retrains since start by outcome",
        [(f"sum by (outcome) (slocast_latency_retrains{{{NS}}})", "{{outcome}}")],
    )
    d.panel(
        "Last retrain duration",
        [(f"max(slocast_latency_last_retrain_seconds{{{NS}}})", "fit + evaluate + publish")],
        unit="s",
    )
    return d


def model_quality() -> Dashboard:
    coverage = (
        "sum by (target) (increase(slocast_latency_live_covered_total{{{ns}}}[{w}])) "
        "/ sum by (target) (increase(slocast_latency_live_observed_total{{{ns}}}[{w}]))"
    )
    d = Dashboard(
        "slocast-model-quality",
        "slocast / model quality",
        "LLM latency bounds against the arriving truth: live P90 coverage, adaptive "
        "conformal inference (ACI) and drift, held-out scores of retrains.",
        "slocast_latency_live_observed_total",
    )
    d.row("Live coverage (latency training server)")
    d.panel(
        "Live coverage of the served bound (30m window)",
        [
            (coverage.format(ns=NS, w="30m"), "{{target}}"),
            (f"max(model_quantile{{{NS}}})", "target quantile"),
        ],
        unit="percentunit",
        thresholds=[("red", None), ("green", 0.85), ("red", 0.95)],
        description="Share of arriving samples at or under the bound the trained model "
        "served when they arrived. The alert SlocastLatencyCoverageOutOfBand fires "
        "outside 0.85-0.95 for 30 minutes.",
    )
    d.panel(
        "Observations compared",
        [
            (
                f"sum by (target) (rate(slocast_latency_live_observed_total{{{NS}}}[{RATE}]))",
                "{{target}}",
            )
        ],
        unit="ops",
    )
    d.row("Adaptive conformal inference and drift")
    d.panel(
        "ACI shift of the offsets",
        [(f"max by (target) (slocast_latency_aci_shift{{{NS}}})", "{{target}}")],
        thresholds=[("green", None), ("orange", 0.02)],
        description="Shift (normalised units) that restores the target coverage on the "
        "newest misses; beyond +-0.02 a recalibrated bundle is published.",
        width=8,
    )
    d.panel(
        "ACI miscoverage level",
        [
            (f"max by (target) (slocast_latency_aci_alpha{{{NS}}})", "{{target}}"),
            (f"1 - max(model_quantile{{{NS}}})", "target"),
        ],
        width=8,
    )
    d.panel(
        "Recalibrations by ACI (drift, 1h)",
        [(f"sum(increase(slocast_latency_recalibrations_total{{{NS}}}[1h]))", "recalibrations")],
        width=8,
    )
    d.row("Retrains (held-out rows)")
    d.panel(
        "Candidate coverage at the last retrain",
        [(f"max by (target) (slocast_latency_eval_coverage{{{NS}}})", "{{target}}")],
        unit="percentunit",
    )
    d.panel(
        "Pinball loss: candidate vs incumbent",
        [
            (
                f"max by (target, model) (slocast_latency_eval_pinball_ms{{{NS}}})",
                "{{target}} {{model}}",
            )
        ],
        unit="ms",
    )
    return d


DASHBOARD_BUILDERS = {
    "serving.json": serving,
    "pipeline.json": pipeline,
    "model-quality.json": model_quality,
}


def dashboards() -> dict[str, str]:
    return {
        name: json.dumps(build().to_json(), indent=2) + "\n"
        for name, build in DASHBOARD_BUILDERS.items()
    }


def generated() -> dict[Path, str]:
    files = {PROMETHEUS_RULE: prometheus_rule()}
    files.update({DASHBOARDS / name: text for name, text in dashboards().items()})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        if path.is_file() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if stale:
        print("out of date (run scripts/render_observability.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
