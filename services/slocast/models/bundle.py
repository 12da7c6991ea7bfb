"""A model version on disk: the forecaster's files, its spec, its calibration.

``manifest.json`` lists every file with its SHA-256; loading verifies them
before anything is parsed, so a truncated or tampered artifact is refused. Only
safe formats are written (JSON, UBJ, ONNX, NPZ without pickle, Prophet's JSON):
nothing is unpickled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slocast import __version__
from slocast.core.conformal import Calibration
from slocast.core.digests import sha256_file
from slocast.core.features import FeatureSpec, predicted_change, residual_scale
from slocast.models import family_class
from slocast.models.base import Forecaster

BUNDLE_FORMAT = 1
MANIFEST = "manifest.json"


class BundleError(Exception):
    """The artifact is missing, corrupted, or of an unknown format."""


@dataclass
class ModelBundle:
    forecaster: Forecaster
    calibration: Calibration
    info: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.forecaster.family

    @property
    def spec(self) -> FeatureSpec:
        return self.forecaster.spec

    def upper(
        self, point: np.ndarray, q: float, values: np.ndarray, ends: np.ndarray
    ) -> np.ndarray:
        """Calibrated upper bound at level ``q`` for forecasts made at ``ends`` of ``values``.

        The evaluator and the server both call this, so served bounds are the
        bounds whose coverage was measured.
        """
        calibration = self.calibration
        if not (calibration.normalised or calibration.grouped):
            upper = calibration.upper(point, q)
        else:
            scale = residual_scale(self.spec, values, ends)
            change = (
                predicted_change(self.spec, point, values, ends, scale)
                if calibration.grouped
                else None
            )
            upper = calibration.upper(point, q, scale if calibration.normalised else None, change)
        # No bound below the target's floor (a low level's offset can be negative and
        # large next to a quiet window's scale): as the point forecasts are floored.
        return self.spec.floor_forecast(np.array(upper, np.float64))


def save_bundle(bundle: ModelBundle, directory: str | Path) -> dict:
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    files = list(bundle.forecaster.save(root))
    (root / "spec.json").write_text(json.dumps(bundle.spec.to_dict(), indent=2))
    (root / "calibration.json").write_text(json.dumps(bundle.calibration.to_dict(), indent=2))
    files += ["spec.json", "calibration.json"]
    manifest = {
        "format": BUNDLE_FORMAT,
        "family": bundle.family,
        "slocast_version": __version__,
        "created_at": time.time(),
        "info": bundle.info,
        "files": {name: sha256_file(root / name) for name in sorted(files)},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def load_bundle(directory: str | Path) -> ModelBundle:
    root = Path(directory)
    manifest = read_manifest(root)
    for name, expected in manifest["files"].items():
        path = root / name
        if not path.is_file():
            raise BundleError(f"{root}: file {name} listed in the manifest is missing")
        if sha256_file(path) != expected:
            raise BundleError(f"{root}: file {name} does not match its SHA-256 in the manifest")
    spec = FeatureSpec.from_dict(json.loads((root / "spec.json").read_text()))
    calibration = Calibration.from_dict(json.loads((root / "calibration.json").read_text()))
    forecaster = family_class(manifest["family"]).load(root, spec)
    return ModelBundle(
        forecaster=forecaster, calibration=calibration, info=manifest.get("info", {})
    )


def read_manifest(root: Path) -> dict:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise BundleError(f"{root}: no {MANIFEST}; not a slocast model bundle") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{root}: {MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{root}: bundle format {manifest.get('format')!r}, expected {BUNDLE_FORMAT}"
        )
    return manifest
