"""The cluster scripts' control flow, against a stub kubectl (there is no cluster here).

The stub records every call and answers `kubectl wait` / `get job` as a Job that
completed, failed or never finished would, so test-cluster.sh's verdict, its log
printing and its bounded wait are checked for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time

import pytest
from k8s_render import MANIFESTS, REPO, example_secret_keys

STUB = textwrap.dedent(
    """\
    #!/usr/bin/env bash
    # Stub kubectl: OUTCOME=complete|failed|hang decides how every Job ends.
    echo "$*" >>"$STUB_LOG"
    args=" $* "
    limit=30
    [[ "$args" =~ --timeout=([0-9]+)s ]] && limit="${BASH_REMATCH[1]}"
    (( limit > 30 )) && limit=30
    case "$args" in
      *" kustomize "*) echo "apiVersion: v1"; echo "kind: List"; exit 0 ;;
      *" wait --for=condition=complete "*)
        [[ "$OUTCOME" == complete ]] && exit 0
        sleep "$limit"; exit 1 ;;
      *" wait --for=condition=failed "*)
        [[ "$OUTCOME" == failed ]] && exit 0
        sleep "$limit"; exit 1 ;;
      *" logs "*) echo "LOGS OF $*"; exit 0 ;;
      *"jsonpath={.status.succeeded}"*) [[ "$OUTCOME" == complete ]] && echo 1; exit 0 ;;
      *"jsonpath={.status.failed}"*) [[ "$OUTCOME" == failed ]] && echo 1; exit 0 ;;
      *) exit 0 ;;
    esac
    """
)


@pytest.fixture
def manifests(tmp_path):
    """A private copy of manifests/ (SLOCAST_MANIFESTS): the tests write secrets.env there."""
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("secrets.env"))
    return root


@pytest.fixture
def stub(tmp_path, manifests):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(STUB)
    kubectl.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    return kubectl, log, manifests


def run_script(script, stub, outcome, *args, **env):
    kubectl, log, manifests = stub
    environment = {
        **os.environ,
        "KUBECTL": str(kubectl),
        "STUB_LOG": str(log),
        "OUTCOME": outcome,
        "SLOCAST_MANIFESTS": str(manifests),
    }
    environment.update(env)
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / script), *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    return result, log.read_text(), time.monotonic() - started


def test_test_cluster_passes_when_every_job_completes(stub):
    result, calls, _ = run_script("test-cluster.sh", stub, "complete", "dev")
    assert result.returncode == 0, result.stderr
    for job in ("seed-lte-dataset", "test-functional", "test-stress"):
        assert f"delete job {job}" in calls, "old Job removed before re-applying"
        assert f"app.kubernetes.io/name={job}" in calls
        assert f"LOGS OF -n slocast-dev logs job/{job}" in result.stdout
    # Only the wait that ends the race is sure to have run: the losing one may be
    # killed before its process starts (the failed-Job test checks the other wait).
    assert "--for=condition=complete" in calls


def test_test_cluster_fails_fast_on_a_failed_job_and_prints_its_logs(stub):
    result, calls, elapsed = run_script("test-cluster.sh", stub, "failed", "dev")
    assert result.returncode != 0
    assert "seed-lte-dataset FAILED" in result.stderr
    assert "LOGS OF -n slocast-dev logs job/seed-lte-dataset" in result.stdout
    assert "test-functional" not in calls, "stops at the first failing Job"
    assert "--for=condition=failed" in calls
    assert elapsed < 20, "the failed condition ends the wait without waiting for complete"


def test_test_cluster_reports_a_timeout(stub):
    result, _, _ = run_script("test-cluster.sh", stub, "hang", "dev", JOB_TIMEOUT="1")
    assert result.returncode != 0
    assert "TIMED OUT" in result.stderr


def test_deploy_refuses_missing_or_placeholder_secrets(stub):
    manifests = stub[2]
    result, calls, _ = run_script("deploy.sh", stub, "complete", "ci")
    assert result.returncode != 0 and "make-secrets.sh ci" in result.stderr
    (manifests / "overlays" / "ci" / "secrets.env").write_text(
        (manifests / "secrets.env.example").read_text()
    )
    result, calls, _ = run_script("deploy.sh", stub, "complete", "ci")
    assert result.returncode != 0 and "replace-me" in result.stderr
    assert " apply " not in calls


def test_deploy_applies_everything_but_the_test_jobs(stub):
    made = run_script("make-secrets.sh", stub, "complete", "dev")[0]
    assert made.returncode == 0, made.stderr
    result, calls, _ = run_script("deploy.sh", stub, "complete", "dev")
    assert result.returncode == 0, result.stderr
    assert "app.kubernetes.io/component!=test" in calls
    assert "delete job -l slocast.io/rerun-on-deploy=true" in calls
    assert "job/minio-bucket-init" in calls


def test_make_secrets_fills_every_key_and_never_overwrites(stub):
    secrets = stub[2] / "overlays" / "ci" / "secrets.env"
    first = run_script("make-secrets.sh", stub, "complete", "ci")[0]
    assert first.returncode == 0, first.stderr
    values = dict(
        line.split("=", 1)
        for line in secrets.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(values) == set(example_secret_keys())
    assert all(len(v) >= 32 and v != "replace-me" for v in values.values())
    assert len(set(values.values())) == len(values)
    assert oct(secrets.stat().st_mode & 0o777) == "0o600"
    again = run_script("make-secrets.sh", stub, "complete", "ci")[0]
    assert again.returncode != 0
