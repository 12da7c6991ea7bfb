"""Every overlay renders, validates against Kubernetes 1.30 and agrees with the code.

Drift checks: each variable a service reads is set by its manifest; Service, PDB,
HPA and NetworkPolicy selectors match pod templates; images map to Dockerfiles;
Secret keys exist in manifests/secrets.env.example; ConfigMap keys are read by
some service (no dead knobs); infrastructure clients carry the labels the
NetworkPolicies admit.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from k8s_render import (
    OVERLAYS,
    REPO,
    Rendered,
    custom_resource_errors,
    example_secret_keys,
    is_custom_resource,
    label_matches,
    pod_labels,
    pod_spec,
)

ENV_SOURCES_ANNOTATION = "slocast.io/env-sources"
# Variables a service reads that a deployment must leave unset, with the reason.
UNSET_IN_DEPLOYMENTS = {
    "SLOCAST_FAULT_INJECTION": "tests only: makes the evaluator crash on purpose",
}
# Containers allowed a writable root filesystem, with the reason.
WRITABLE_ROOT = {"kafka": "the image's launcher writes server.properties under /opt/kafka/config"}
# Long-running containers without probes, with the reason.
NO_PROBES = {"locust-worker": "no port to probe; exits when it loses the master"}


@pytest.fixture(params=OVERLAYS)
def overlay(request, rendered) -> Rendered:
    return rendered[request.param]


# ---------------------------------------------------------------- render + schema


def test_every_overlay_validates_for_kubernetes_1_30(overlay):
    """Built-in kinds against Kubernetes 1.30 (kubernetes-validate); custom resources
    (the Prometheus operator's) against the strict schemas in tests/k8s/schemas."""
    builtin = [d for d in overlay.docs if not is_custom_resource(d)]
    custom = [d for d in overlay.docs if is_custom_resource(d)]
    path = overlay.path.with_suffix(".builtin.yaml")
    path.write_text(yaml.safe_dump_all(builtin, sort_keys=False))
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "-k", "1.30.0", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    not_passed = [line for line in lines if not (line.startswith("INFO") and " passed " in line)]
    assert result.returncode == 0 and not not_passed, "\n".join(not_passed or lines)
    passed = [line for line in lines if " passed " in line]
    assert len(passed) == len(builtin), f"validated {len(passed)} of {len(builtin)}"
    problems = [problem for doc in custom for problem in custom_resource_errors(doc)]
    assert not problems, "\n".join(problems)


def test_validation_rejects_an_unknown_field(tmp_path):
    """The validator really is strict (so the test above can fail)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n"
        "spec:\n  selectr:\n    app: x\n  ports:\n    - port: 80\n"
    )
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "-k", "1.30.0", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


def test_overlay_has_its_namespace_with_restricted_pod_security(overlay):
    namespaces = overlay.of_kind("Namespace")
    assert len(namespaces) == 1
    name = namespaces[0]["metadata"]["name"]
    labels = namespaces[0]["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for doc in overlay.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == name, doc["metadata"]["name"]


def test_system_is_complete(overlay):
    names = {(d["kind"], d["metadata"]["name"]) for d in overlay.docs}
    required = [
        ("StatefulSet", "kafka"),
        ("StatefulSet", "postgres"),
        ("Deployment", "minio"),
        ("Job", "minio-bucket-init"),
        ("Deployment", "mlflow"),
        ("Deployment", "preprocess"),
        ("Deployment", "evaluator"),
        ("Deployment", "prediction"),
        ("Service", "prediction"),
        ("HorizontalPodAutoscaler", "prediction"),
        ("PodDisruptionBudget", "prediction"),
        ("Deployment", "latency-trainer"),
        ("Deployment", "latency-predictor"),
        ("Service", "latency-predictor"),
        ("Deployment", "locust-master"),
        ("Service", "locust"),
        ("Deployment", "locust-worker"),
        ("Job", "test-functional"),
        ("Job", "test-stress"),
    ]
    missing = [r for r in required if r not in names]
    assert not missing


def test_one_trainer_per_expected_family(overlay):
    from slocast.models import FAMILIES

    config = overlay.generated("ConfigMap", "slocast-config")["data"]
    expected = config["SLOCAST_EXPECTED_FAMILIES"].split(",")
    trainers = {}
    for deployment in overlay.of_kind("Deployment"):
        container = pod_spec(deployment)["containers"][0]
        args = container.get("args", [])
        if args[:2] == ["service", "trainer"]:
            family = args[args.index("--family") + 1]
            assert family in FAMILIES
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("SLOCAST_TRAINER_FAMILY") == family
            trainers[family] = deployment["spec"]["replicas"]
    assert set(FAMILIES) <= set(trainers), "every family has a trainer Deployment"
    for family in expected:
        assert trainers.get(family, 0) >= 1, f"evaluator waits for {family}, which has no trainer"


def test_kafka_runs_kraft_with_a_volume(overlay):
    kafka = overlay.get("StatefulSet", "kafka")
    config = overlay.generated("ConfigMap", "kafka-config")["data"]
    assert "controller" in config["KAFKA_PROCESS_ROLES"]
    voters = config["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == kafka["spec"]["replicas"], "one KRaft voter per Kafka pod"
    assert int(config["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) <= kafka["spec"]["replicas"]
    assert [t["metadata"]["name"] for t in kafka["spec"]["volumeClaimTemplates"]] == ["data"]
    if overlay.name == "dev":
        assert kafka["spec"]["replicas"] == 1


def test_mlflow_server_is_reachable_by_its_service_name(overlay):
    mlflow = overlay.get("Deployment", "mlflow")
    args = pod_spec(mlflow)["containers"][0]["args"]
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert "mlflow" in hosts and "mlflow:*" in hosts
    assert args[args.index("--backend-store-uri") + 1].startswith("postgresql")
    assert args[args.index("--artifacts-destination") + 1].startswith("s3://")
    config = overlay.generated("ConfigMap", "slocast-config")["data"]
    service = overlay.get("Service", "mlflow")
    assert config["MLFLOW_TRACKING_URI"] == f"http://mlflow:{service['spec']['ports'][0]['port']}"


def test_store_bucket_is_created_by_bucket_init(overlay):
    config = overlay.generated("ConfigMap", "slocast-config")["data"]
    infra = overlay.generated("ConfigMap", "infra-config")["data"]
    store = config["SLOCAST_STORE_URI"]
    assert store.startswith("s3://")
    assert store[len("s3://") :].split("/")[0] == infra["DATA_BUCKET"]


# ---------------------------------------------------------------- pod hygiene


def _long_running(overlay):
    return overlay.of_kind("Deployment", "StatefulSet")


def test_pods_run_non_root_without_privileges(overlay):
    problems = []
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{name}: service account token mounted")
        if pod_sc.get("runAsNonRoot") is not True or not pod_sc.get("runAsUser"):
            problems.append(f"{name}: not runAsNonRoot with a runAsUser")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for container in spec["containers"] + spec.get("initContainers", []):
            sc = container.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}/{container['name']}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}/{container['name']}: capabilities not dropped")
            if (
                sc.get("readOnlyRootFilesystem") is not True
                and container["name"] not in WRITABLE_ROOT
            ):
                problems.append(f"{name}/{container['name']}: writable root filesystem")
    assert not problems, "\n".join(problems)


def test_read_only_pods_have_a_writable_tmp(overlay):
    for workload in overlay.workloads():
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{workload['metadata']['name']}: no /tmp volume"
            assert "emptyDir" in volumes[mounts["/tmp"]]


def test_containers_have_requests_limits_and_probes(overlay):
    problems = []
    for workload in overlay.workloads():
        name = workload["metadata"]["name"]
        for container in pod_spec(workload)["containers"]:
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in resources.get(part, {}):
                        problems.append(f"{name}: no {part}.{resource}")
            if workload["kind"] != "Job" and name not in NO_PROBES:
                for probe in ("readinessProbe", "livenessProbe"):
                    if probe not in container:
                        problems.append(f"{name}: no {probe}")
    assert not problems, "\n".join(problems)


def test_jobs_are_bounded(overlay):
    for job in overlay.of_kind("Job"):
        spec = job["spec"]
        assert 0 < spec.get("activeDeadlineSeconds", 0) <= 3600, job["metadata"]["name"]
        assert spec.get("backoffLimit", 6) <= 4
        if job["metadata"]["labels"].get("app.kubernetes.io/component") == "test":
            assert pod_spec(job)["restartPolicy"] == "Never"


def test_suite_jobs_run_the_test_image_command(overlay):
    for name, suite in (("test-functional", "functional"), ("test-stress", "stress")):
        container = pod_spec(overlay.get("Job", name))["containers"][0]
        assert container["args"] == [suite]
        assert "command" not in container, "the image's entry point (suite_job.py) runs the suite"
        env = {e["name"] for e in container["env"]}
        assert {
            "SLOCAST_URL",
            "SLOCAST_LATENCY_TRAINING_URL",
            "SLOCAST_LATENCY_PREDICTION_URL",
            "SLOCAST_WAIT_TIMEOUT_SECONDS",
        } <= env


# ---------------------------------------------------------------- selectors


def _templates(overlay):
    return [(w, pod_labels(w)) for w in overlay.workloads()]


def test_every_service_selects_pods_with_its_target_ports(overlay):
    for service in overlay.of_kind("Service"):
        selector = service["spec"]["selector"]
        matched = [w for w, labels in _templates(overlay) if label_matches(selector, labels)]
        assert matched, f"Service {service['metadata']['name']} selects no pod template"
        for workload in matched:
            ports = {
                p.get("name"): p["containerPort"]
                for c in pod_spec(workload)["containers"]
                for p in c.get("ports", [])
            }
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                ok = target in ports if isinstance(target, str) else target in ports.values()
                assert ok, f"Service {service['metadata']['name']}: no port {target} on pods"


def test_pdbs_hpas_and_policies_match_workloads(overlay):
    for pdb in overlay.of_kind("PodDisruptionBudget"):
        assert any(
            label_matches(pdb["spec"]["selector"], labels) for _, labels in _templates(overlay)
        ), pdb["metadata"]["name"]
    deployments = {d["metadata"]["name"] for d in overlay.of_kind("Deployment")}
    for hpa in overlay.of_kind("HorizontalPodAutoscaler"):
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for policy in overlay.of_kind("NetworkPolicy"):
        assert any(
            label_matches(policy["spec"]["podSelector"], labels)
            for _, labels in _templates(overlay)
        ), f"NetworkPolicy {policy['metadata']['name']} selects nothing"


def test_network_policies_admit_every_service_port(overlay):
    """Ingress is denied by default, so each Service port needs a policy allowing it."""
    policies = overlay.of_kind("NetworkPolicy")
    assert any(p["spec"]["podSelector"] == {} for p in policies), "no default-deny policy"
    for service in overlay.of_kind("Service"):
        selector = service["spec"]["selector"]
        for port in service["spec"]["ports"]:
            number = port["port"]
            allowed = any(
                label_matches(p["spec"]["podSelector"], selector)
                and any(
                    any(
                        q["port"] in (number, port.get("targetPort")) for q in rule.get("ports", [])
                    )
                    for rule in p["spec"].get("ingress", [])
                )
                for p in policies
            )
            assert allowed, f"no NetworkPolicy admits {service['metadata']['name']}:{number}"


def _provided_env(overlay: Rendered, container: dict) -> set[str]:
    names = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            names |= set(overlay.get("ConfigMap", source["configMapRef"]["name"])["data"])
        if "secretRef" in source:
            names |= set(overlay.get("Secret", source["secretRef"]["name"])["data"])
    return names


def test_infrastructure_clients_carry_exactly_the_labels_they_need(overlay):
    """A service reading a variable of Kafka/MLflow/S3 needs the label its NetworkPolicy
    admits; a service that does not read it must not carry the label (least privilege)."""
    needs = {
        "slocast.io/kafka-client": "SLOCAST_KAFKA_BOOTSTRAP",
        "slocast.io/mlflow-client": "MLFLOW_TRACKING_URI",
        "slocast.io/s3-client": "SLOCAST_S3_ENDPOINT_URL",
    }
    sources = env_sources()
    for workload in overlay.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if ENV_SOURCES_ANNOTATION not in annotations:
            continue
        reads = set().union(
            *(sources.get(s, set()) for s in annotations[ENV_SOURCES_ANNOTATION].split(","))
        )
        labels = pod_labels(workload)
        for label, var in needs.items():
            name = workload["metadata"]["name"]
            if var in reads:
                assert labels.get(label) == "true", f"{name} reads {var} but lacks {label}"
            else:
                assert label not in labels, f"{name} carries {label} but never reads {var}"


# ---------------------------------------------------------------- images, secrets


def test_every_image_maps_to_a_dockerfile_or_a_pinned_tag(overlay):
    for workload in overlay.workloads():
        for container in pod_spec(workload)["containers"]:
            image = container["image"]
            reference, _, tag = image.rpartition(":")
            if "/" in tag:  # a registry port, not a tag
                reference, tag = image, ""
            basename = reference.rsplit("/", 1)[-1]
            assert tag and tag != "latest", f"{image}: unpinned"
            if basename.startswith("slocast-"):
                dockerfile = REPO / f"Dockerfile-{basename.removeprefix('slocast-')}"
                assert dockerfile.is_file(), f"{image}: no {dockerfile.name}"
            else:
                assert any(ch.isdigit() for ch in tag), f"{image}: tag is not a version"


def test_every_dockerfile_is_deployed(rendered):
    images = {
        c["image"].rsplit("/", 1)[-1].split(":")[0]
        for r in rendered.values()
        for w in r.workloads()
        for c in pod_spec(w)["containers"]
    }
    for dockerfile in REPO.glob("Dockerfile-*"):
        assert f"slocast-{dockerfile.name.removeprefix('Dockerfile-')}" in images


def test_secret_keys_exist_in_the_example_file(overlay):
    example = set(example_secret_keys())
    secret = overlay.generated("Secret", "slocast-secrets")
    assert set(secret["data"]) == example
    secrets = {s["metadata"]["name"] for s in overlay.of_kind("Secret")}
    for workload in overlay.workloads():
        for container in pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, f"{ref['name']} is not generated"
                    assert ref["key"] in example, f"{ref['key']} missing from secrets.env.example"
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, "reference secret keys one by one"


def test_config_map_key_references_exist(overlay):
    for workload in overlay.workloads():
        for container in pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    data = overlay.get("ConfigMap", ref["name"])["data"]
                    assert ref["key"] in data, f"{ref['name']} has no {ref['key']}"


def test_no_credentials_in_plain_values(overlay):
    secret_names = set(example_secret_keys())
    for workload in overlay.workloads():
        for container in pod_spec(workload)["containers"]:
            for env in container.get("env", []):
                if env["name"] in secret_names:
                    assert "valueFrom" in env, f"{env['name']} set in plain text"
    for config in overlay.of_kind("ConfigMap"):
        assert not secret_names & set(config.get("data", {})), config["metadata"]["name"]


# ---------------------------------------------------------------- environment drift


def env_sources() -> dict[str, set[str]]:
    """Settings group -> the variables it reads, from the code that reads them."""
    from slocast.settings import SERVICE_ENV

    return {name: set(names) for name, names in SERVICE_ENV.items()}


def test_every_variable_a_service_reads_is_set(overlay):
    sources = env_sources()
    used = set()
    problems = []
    for workload in overlay.workloads():
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if ENV_SOURCES_ANNOTATION not in annotations:
            continue
        name = workload["metadata"]["name"]
        container = pod_spec(workload)["containers"][0]
        provided = _provided_env(overlay, container)
        for source in annotations[ENV_SOURCES_ANNOTATION].split(","):
            assert source in sources, f"{name}: unknown settings group {source!r}"
            used.add(source)
            for var in sorted(sources[source] - provided - set(UNSET_IN_DEPLOYMENTS)):
                problems.append(f"{name} ({source}) reads {var}, which its manifest does not set")
            for var in sorted(set(UNSET_IN_DEPLOYMENTS) & provided):
                problems.append(f"{name} sets {var}: {UNSET_IN_DEPLOYMENTS[var]}")
    assert not problems, "\n".join(problems)
    assert used == set(sources), f"no workload reads settings group(s) {set(sources) - used}"


def test_slocast_services_declare_their_settings(overlay):
    for workload in overlay.workloads():
        image = pod_spec(workload)["containers"][0]["image"]
        command = pod_spec(workload)["containers"][0].get("command", [])
        if "slocast-training" in image or "slocast-prediction" in image:
            if command and command[0] == "mlflow":
                continue
            annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
            assert ENV_SOURCES_ANNOTATION in annotations, workload["metadata"]["name"]


def test_no_dead_configuration_keys(overlay):
    read = set().union(*env_sources().values())
    config = overlay.generated("ConfigMap", "slocast-config")["data"]
    dead = sorted(set(config) - read)
    assert not dead, f"slocast-config keys no service reads: {dead}"
