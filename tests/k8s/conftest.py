"""Fixtures of the deployment checks: kubectl (kustomize v5) and every rendered overlay.

kubectl comes from ``$KUBECTL``, ``.tools/bin/kubectl`` (``scripts/install-kubectl.sh``,
which CI runs) or ``PATH``; the tests that need it skip, saying so, only when none
exists. Overlays are rendered from a temporary copy of ``manifests/`` whose
``secrets.env`` files are written from ``manifests/secrets.env.example`` (dummy
values), so the example file is exactly what the secretGenerators are checked against.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from k8s_render import (
    MANIFESTS,
    OVERLAYS,
    Rendered,
    example_secret_keys,
    find_kubectl,
    load_rendered,
    render,
)


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = find_kubectl()
    if path is None:
        pytest.skip(
            "kubectl with kustomize v5 not found (run scripts/install-kubectl.sh, or set KUBECTL)"
        )
    return path


@pytest.fixture(scope="session")
def manifests_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("secrets.env"))
    values = "".join(
        f"{key}=dummy-{key.lower().replace('_', '-')}\n" for key in example_secret_keys()
    )
    for overlay in OVERLAYS:
        (root / "overlays" / overlay / "secrets.env").write_text(values)
    return root


@pytest.fixture(scope="session")
def rendered(kubectl, manifests_copy) -> dict[str, Rendered]:
    return {
        overlay: load_rendered(
            overlay,
            manifests_copy / f"rendered-{overlay}.yaml",
            render(kubectl, manifests_copy / "overlays" / overlay),
        )
        for overlay in OVERLAYS
    }
