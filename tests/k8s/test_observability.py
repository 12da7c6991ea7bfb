"""Scrape targets, dashboards and alert rules (manifests/components/observability).

- promtool checks the rules file and runs its unit tests (rules.test.yaml);
- the PrometheusRule and the dashboards are what scripts/render_observability.py
  generates (the rules file is the one source of truth);
- every PromQL expression (rules, panels, variables) names only metrics the code
  exports, found by scanning the source for metric definitions;
- the rendered overlays scrape every pod that serves /metrics, on a declared port.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache

import pytest
import yaml
from k8s_render import REPO, Rendered, custom_resource_errors, pod_labels, pod_spec

COMPONENT = REPO / "manifests" / "components" / "observability"
RULES = COMPONENT / "rules.yaml"
RULES_TEST = COMPONENT / "rules.test.yaml"
DASHBOARDS = COMPONENT / "dashboards"
SOURCE = REPO / "services" / "slocast"

# Names a metric of each type exposes (prometheus-client, text format 0.0.4).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "untyped": ("",),
}
CONSTRUCTORS = {
    "Counter": "counter",
    "Gauge": "gauge",
    "Histogram": "histogram",
    "Summary": "summary",
    "Info": "info",
    "CounterMetricFamily": "counter",
    "GaugeMetricFamily": "gauge",
    "HistogramMetricFamily": "histogram",
    "SummaryMetricFamily": "summary",
    "InfoMetricFamily": "info",
}
TYPE_LINE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$")
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


# ---------------------------------------------------------------- promtool


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool not found: `make install` (or .ci/run) installs it with "
        "`apt-get install -y --no-install-recommends prometheus`"
    )
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=120, cwd=COMPONENT
    )


def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert f"SUCCESS: {len(alerts)} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules():
    result = run_promtool("test", "rules", RULES_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_promtool_test():
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULES_TEST.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested, f"alerts without a firing test: {sorted(alerts - tested)}"


def test_promtool_unit_tests_can_fail(tmp_path):
    """The promtool run above would notice a wrong expectation."""
    shutil.copy(RULES, tmp_path / RULES.name)
    tests = yaml.safe_load(RULES_TEST.read_text())
    tests["tests"] = tests["tests"][:1]  # the coverage case alone
    text = yaml.safe_dump(tests, sort_keys=False)
    assert "coverage is 75%" in text
    (tmp_path / RULES_TEST.name).write_text(text.replace("coverage is 75%", "coverage is 76%"))
    result = subprocess.run(
        [promtool(), "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
    assert "alertname: SlocastLatencyCoverageOutOfBand" in result.stdout + result.stderr


# ---------------------------------------------------------------- generated files


@cache
def generator():
    spec = importlib.util.spec_from_file_location(
        "render_observability", REPO / "scripts" / "render_observability.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_up_to_date():
    stale = [
        str(path.relative_to(REPO))
        for path, text in generator().generated().items()
        if not path.is_file() or path.read_text() != text
    ]
    assert not stale, f"run `python scripts/render_observability.py`: {stale} out of date"


def test_prometheus_rule_carries_the_rules_file():
    rule = yaml.safe_load((COMPONENT / "prometheusrule.yaml").read_text())
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    assert not custom_resource_errors(rule)


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def test_dashboards_parse_with_unique_ids_and_uids():
    found = dashboards()
    assert set(found) == {"serving.json", "pipeline.json", "model-quality.json"}
    uids = [d["uid"] for d in found.values()]
    assert len(set(uids)) == len(uids)
    for name, dashboard in found.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name}: panel {panel['title']!r} has no query"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), f"{name}: {panel['title']!r} reuses a refId"
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']!r} overflows"


# ---------------------------------------------------------------- metric names


def _constant_strings(node: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


@cache
def exported_metrics() -> dict[str, str]:
    """Metric family name -> type, for every metric defined in services/slocast:
    prometheus-client constructors with a literal name, and hand-written ``# TYPE``
    lines (names with placeholders are skipped: no query may use them)."""
    found: dict[str, str] = {}
    for path in SOURCE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if callee in CONSTRUCTORS and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        name = first.value
                        kind = CONSTRUCTORS[callee]
                        if kind == "counter":
                            name = name.removesuffix("_total")
                        found[name] = kind
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = TYPE_LINE.match(node.value)
                if match:
                    found[match.group(1)] = match.group(2)
    return found


@cache
def exported_series_names() -> frozenset[str]:
    return frozenset(
        name + suffix for name, kind in exported_metrics().items() for suffix in SUFFIXES[kind]
    )


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Grafana variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{?\w+\}?", "1", text)  # $__rate_interval, ${datasource}
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, subqueries
    keywords = "|".join(PROMQL_KEYWORDS)
    text = re.sub(rf"\b({keywords})\s*\([^)]*\)", " ", text)  # by (...), on (...)
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
        word = match.group(1)
        if re.match(r"\s*\(", text[match.end() :]):  # a function or aggregation
            continue
        if word.lower() in PROMQL_WORDS | PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule, panel target and query variable."""
    queries = [
        (f"rules.yaml {r.get('alert') or r.get('record')}", r["expr"])
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
    ]
    for name, dashboard in dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                queries.append((f"{name} {panel['title']!r}", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", variable["query"])
                assert match, f"{name}: unexpected variable query {variable['query']!r}"
                queries.append((f"{name} ${variable['name']}", match.group(1)))
    return queries


def test_every_query_names_only_exported_metrics():
    exported = exported_series_names()
    problems = []
    for where, expr in _queries():
        names = promql_metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in sorted(names - exported):
            problems.append(f"{where}: {name} is not exported by services/slocast")
    assert not problems, "\n".join(problems)


def test_metric_name_check_catches_typos_and_keeps_real_names():
    exported = exported_series_names()
    expr = (
        'sum by (route, le) (rate(slocast_http_request_duration_seconds_bucket{status=~"5.."}'
        "[$__rate_interval])) / ignoring (le) group_left slocast_http_requests_totl offset 1h"
    )
    names = promql_metric_names(expr)
    assert names == {"slocast_http_request_duration_seconds_bucket", "slocast_http_requests_totl"}
    assert names - exported == {"slocast_http_requests_totl"}
    assert promql_metric_names("time() - max(slocast_model_loaded_timestamp_seconds)") == {
        "slocast_model_loaded_timestamp_seconds"
    }


def test_source_scan_matches_the_registries():
    """The static scan sees what the registries really register (so it is no stub)."""
    from prometheus_client.core import Metric

    from slocast.pipeline.metrics import PipelineMetrics
    from slocast.serve.metrics import ServeMetrics

    scanned = exported_metrics()
    for registry in (ServeMetrics().registry, PipelineMetrics("x").registry):
        families: list[Metric] = list(registry.collect())
        assert families
        for family in families:
            assert scanned.get(family.name) == family.type, family.name
    # hand-written families of the latency training server
    assert scanned["model_quantile"] == "gauge"
    assert scanned["slocast_latency_live_observed"] == "counter"
    assert scanned["slocast_latency_model_cold"] == "gauge"


# ---------------------------------------------------------------- rendered overlays


def _serves_metrics(workload: dict) -> str | None:
    """The port name of a slocast workload's /metrics: http servers and Kafka services."""
    labels = pod_labels(workload)
    if labels.get("app.kubernetes.io/component") != "slocast" or workload["kind"] != "Deployment":
        return None
    ports = {p["name"] for c in pod_spec(workload)["containers"] for p in c.get("ports", [])}
    return "health" if "health" in ports else "http"


def _pod_monitor_scrapes(monitor: dict, workload: dict, port_name: str) -> bool:
    selector = monitor["spec"]["selector"]
    labels = pod_labels(workload)
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", "extend the check for other operators"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return any(e.get("port") == port_name for e in monitor["spec"]["podMetricsEndpoints"])


def _declared_port(workload: dict, name: str) -> int:
    for container in pod_spec(workload)["containers"]:
        for port in container.get("ports", []):
            if port["name"] == name:
                return port["containerPort"]
    raise AssertionError(f"{workload['metadata']['name']}: no port {name}")


def test_prod_has_the_observability_component(rendered: dict[str, Rendered]):
    prod = rendered["prod"]
    assert {d["metadata"]["name"] for d in prod.of_kind("PodMonitor")} == {
        "slocast-servers",
        "slocast-pipeline",
    }
    rule = prod.get("PrometheusRule", "slocast")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    board = prod.get("ConfigMap", "slocast-dashboards")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert {k: json.loads(v) for k, v in board["data"].items()} == dashboards()


@pytest.mark.parametrize("overlay_name", ["dev", "prod"])
def test_every_metrics_endpoint_is_scraped(rendered: dict[str, Rendered], overlay_name: str):
    overlay = rendered[overlay_name]
    monitors = overlay.of_kind("PodMonitor")
    assert bool(monitors) == (overlay_name == "prod")
    scraped = []
    for workload in overlay.workloads():
        port_name = _serves_metrics(workload)
        if port_name is None:
            continue
        name = workload["metadata"]["name"]
        scraped.append(name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations.get("prometheus.io/scrape") == "true", name
        assert annotations.get("prometheus.io/path") == "/metrics", name
        port = _declared_port(workload, port_name)
        assert annotations.get("prometheus.io/port") == str(port), name
        if monitors:
            assert any(_pod_monitor_scrapes(m, workload, port_name) for m in monitors), name
        policy = overlay.get("NetworkPolicy", "prometheus-scrape")
        assert all(
            pod_labels(workload).get(k) == v
            for k, v in policy["spec"]["podSelector"]["matchLabels"].items()
        )
        assert any(port in [p["port"] for p in rule["ports"]] for rule in policy["spec"]["ingress"])
    assert {"prediction", "latency-trainer", "latency-predictor", "evaluator"} <= set(scraped)
    assert "preprocess" in scraped and any(n.startswith("trainer-") for n in scraped)


def test_overlays_without_the_component_need_no_operator(rendered: dict[str, Rendered]):
    for name in ("dev", "ci"):
        kinds = {d["kind"] for d in rendered[name].docs}
        assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}, name


def test_custom_resource_schemas_are_strict():
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": "x"},
        "spec": {"selector": {}, "podMetricEndpoints": [{"port": "http"}]},
    }
    assert custom_resource_errors(monitor)
    assert custom_resource_errors({**monitor, "kind": "ServiceMonitor"})
