"""MLflow adapter: tracking runs, registering versions, the ``champion`` alias.

Stage code never talks to MLflow directly; the runners pass a
:class:`ModelRegistry`. Works against the embedded SQLite store and an MLflow
server alike. One registered model per task: ``slocast-<task>``.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from slocast.core.errors import ConfigError

CHAMPION_ALIAS = "champion"
EXPERIMENT = "slocast"
# Tags written on runs and model versions; the durable evaluator queries them.
TAG_TASK = "slocast.task"
TAG_DATASET = "slocast.dataset_id"
TAG_FAMILY = "slocast.family"
TAG_ROLE = "slocast.role"

# A task names a registered model and appears inside MLflow filter strings: keep it to
# characters that need no quoting anywhere (and fit MLflow's name limits).
TASK_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"

log = logging.getLogger(__name__)


def check_task(task: str) -> str:
    """``task`` unchanged, or a :class:`ConfigError` that says what a task name may hold."""
    if not re.fullmatch(TASK_PATTERN, task):
        raise ConfigError(
            f"task name {task!r} is not allowed: use 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (e.g. --task PobleSec)"
        )
    return task


def task_from_file(path: Path) -> str:
    """The default task of a data file: its stem, with characters a task cannot hold as '_'."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:100]
    return check_task(name if name[:1].isalnum() else f"t{name}"[:100])


def registered_name(task: str) -> str:
    return f"slocast-{check_task(task)}"


@dataclass(frozen=True)
class VersionRef:
    """A registered model version and where its bundle lives."""

    task: str
    version: str
    run_id: str
    source: str
    tags: dict

    @property
    def family(self) -> str:
        return self.tags.get(TAG_FAMILY, "")

    @property
    def dataset_id(self) -> str:
        return self.tags.get(TAG_DATASET, "")


class ModelRegistry:
    def __init__(self, tracking_uri: str, *, artifact_location: str | None = None) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self._mlflow = mlflow
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment_id(artifact_location)

    def _experiment_id(self, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=artifact_location)
        except MlflowException as exc:
            # Services starting together race to create it: the loser uses the winner's.
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                raise
            return experiment.experiment_id

    # --- tracking -----------------------------------------------------------------
    def log_model_run(
        self,
        *,
        task: str,
        family: str,
        dataset_id: str,
        bundle_dir: Path,
        params: dict,
        metrics: dict[str, float],
        role: str,
        figures: dict[str, object] | None = None,
        extra_tags: dict[str, str] | None = None,
    ) -> VersionRef:
        """Log one trained model as a run and register it as a new version."""
        tags = {
            TAG_TASK: task,
            TAG_FAMILY: family,
            TAG_DATASET: dataset_id,
            TAG_ROLE: role,
            **(extra_tags or {}),
        }
        with self._mlflow.start_run(
            experiment_id=self.experiment_id, run_name=f"{family}-{dataset_id[:12]}", tags=tags
        ) as run:
            if params:
                self._mlflow.log_params({k: _param(v) for k, v in params.items()})
            finite = {k: float(v) for k, v in metrics.items() if v == v and abs(v) != float("inf")}
            if finite:
                self._mlflow.log_metrics(finite)
            for name, figure in (figures or {}).items():
                self._mlflow.log_figure(figure, f"plots/{name}.png")
            self._mlflow.log_artifacts(str(bundle_dir), artifact_path="model")
            source = self._mlflow.get_artifact_uri("model")
        name = registered_name(task)
        self._ensure_registered(name)
        version = self.client.create_model_version(
            name, source=source, run_id=run.info.run_id, tags=tags
        )
        return VersionRef(task, str(version.version), run.info.run_id, source, tags)

    def _ensure_registered(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name)
            except MlflowException as exc:  # created concurrently by another service
                if "already exists" not in str(exc).lower():
                    raise

    # --- registry -----------------------------------------------------------------
    def champion(self, task: str) -> VersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(registered_name(task), CHAMPION_ALIAS)
        except MlflowException:
            return None
        return VersionRef(task, str(mv.version), mv.run_id, mv.source, dict(mv.tags))

    def version(self, task: str, version: str) -> VersionRef:
        mv = self.client.get_model_version(registered_name(task), version)
        return VersionRef(task, str(mv.version), mv.run_id, mv.source, dict(mv.tags))

    def promote(self, ref: VersionRef, *, test_metrics: dict[str, float], decision: dict) -> None:
        """Tag the version with its test metrics and point the alias at it."""
        name = registered_name(ref.task)
        for key, value in test_metrics.items():
            self.client.set_model_version_tag(name, ref.version, f"test.{key}", f"{value:.6g}")
        self.client.set_model_version_tag(
            name, ref.version, "slocast.decision_id", decision["decision_id"]
        )
        self.client.set_registered_model_alias(name, CHAMPION_ALIAS, ref.version)

    def attach_files(self, ref: VersionRef, local_dir: Path, subdir: str) -> None:
        """Upload ``local_dir`` into ``subdir`` of the version's bundle (its source URI),
        so :meth:`download` fetches the files with the bundle."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(ref.source, tracking_uri=self.tracking_uri)
        repository.log_artifacts(str(local_dir), artifact_path=subdir)

    def set_version_tag(self, ref: VersionRef, key: str, value: str) -> None:
        self.client.set_model_version_tag(registered_name(ref.task), ref.version, key, value)

    def log_decision(self, task: str, decision: dict) -> None:
        """Record the decision as a run of its own (JSON artifact plus tags)."""
        tags = {TAG_TASK: task, TAG_DATASET: decision["dataset_id"], TAG_ROLE: "decision"}
        with self._mlflow.start_run(
            experiment_id=self.experiment_id,
            run_name=f"decision-{decision['dataset_id'][:12]}",
            tags=tags,
        ):
            self._mlflow.log_dict(decision, "decision.json")

    def download(self, ref: VersionRef, destination: str | Path | None = None) -> Path:
        """Fetch a version's bundle directory to local disk."""
        dst = Path(destination) if destination else Path(tempfile.mkdtemp(prefix="slocast-model-"))
        dst.mkdir(parents=True, exist_ok=True)
        path = self._mlflow.artifacts.download_artifacts(artifact_uri=ref.source, dst_path=str(dst))
        return Path(path)


def _param(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:6000]
