"""Rendering helpers of the deployment checks (imported by conftest and the tests)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
OVERLAYS = sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if p.is_dir())
SECRETS_EXAMPLE = MANIFESTS / "secrets.env.example"
KEY_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=")
# Strict JSON schemas of the custom resources the manifests use, by (apiVersion, kind).
SCHEMAS = Path(__file__).resolve().parent / "schemas"
CUSTOM_RESOURCE_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): SCHEMAS / "podmonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): SCHEMAS / "prometheusrule-monitoring-v1.json",
}


def example_secret_keys() -> list[str]:
    keys = []
    for line in SECRETS_EXAMPLE.read_text().splitlines():
        match = KEY_LINE.match(line)
        if match:
            keys.append(match.group(1))
    return keys


def find_kubectl() -> str | None:
    candidates = [os.environ.get("KUBECTL"), str(REPO / ".tools" / "bin" / "kubectl")]
    candidates.append(shutil.which("kubectl"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            version = subprocess.run(
                [candidate, "version", "--client"], capture_output=True, text=True, timeout=30
            )
            if version.returncode == 0 and "Kustomize Version: v5" in version.stdout:
                return candidate
    return None


@dataclass
class Rendered:
    """One overlay's ``kubectl kustomize`` output."""

    name: str
    path: Path
    docs: list[dict]

    def of_kind(self, *kinds: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] in kinds]

    def get(self, kind: str, name: str) -> dict:
        for doc in self.docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise KeyError(f"{self.name}: no {kind} {name}")

    def generated(self, kind: str, base_name: str) -> dict:
        """A generated ConfigMap/Secret by its name before the hash suffix."""
        for doc in self.of_kind(kind):
            if re.fullmatch(rf"{re.escape(base_name)}-[a-z0-9]{{10}}", doc["metadata"]["name"]):
                return doc
        raise KeyError(f"{self.name}: no generated {kind} {base_name}")

    def workloads(self) -> list[dict]:
        return self.of_kind("Deployment", "StatefulSet", "Job")


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"].get("labels", {})


def label_matches(selector: dict, labels: dict) -> bool:
    """matchLabels / plain selector semantics (the only forms these manifests use)."""
    if "matchExpressions" in selector:
        raise AssertionError("matchExpressions are not used in these manifests; extend the check")
    wanted = selector.get("matchLabels", selector)
    return all(labels.get(k) == v for k, v in wanted.items())


def render(kubectl: str, overlay_dir: Path) -> str:
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay_dir)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{overlay_dir.name} does not render:\n{result.stderr}"
    return result.stdout


def load_rendered(name: str, path: Path, text: str) -> Rendered:
    path.write_text(text)
    return Rendered(name, path, [d for d in yaml.safe_load_all(text) if d])


def is_custom_resource(doc: dict) -> bool:
    """Not a built-in Kubernetes kind: its API group has a dot and is not *.k8s.io."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def custom_resource_errors(doc: dict) -> list[str]:
    """Schema violations of a custom resource (an unknown kind is one)."""
    import jsonschema

    name = f"{doc['kind']} {doc.get('metadata', {}).get('name')}"
    schema_path = CUSTOM_RESOURCE_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_path is None:
        return [f"{name}: no schema for {doc['apiVersion']} (add one to tests/k8s/schemas)"]
    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))
    return [
        f"{name}: {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]
