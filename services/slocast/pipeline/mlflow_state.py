"""What the services know, derived from MLflow instead of memory.

Trainers find earlier identical runs by idempotency key; the evaluator finds which
families have results for a dataset, whether a decision was already taken, and
whether its model-selected event went out. A restarted service asks again and
carries on where the last one stopped.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from slocast import __version__
from slocast.adapters.registry import (
    TAG_DATASET,
    TAG_FAMILY,
    TAG_ROLE,
    TAG_TASK,
    ModelRegistry,
    VersionRef,
    registered_name,
)

TAG_KEY = "slocast.idempotency_key"
# Every run and version the services log carries its namespace: services sharing one
# MLflow (namespaces A and B) never see, decide or announce each other's datasets.
TAG_NAMESPACE = "slocast.namespace"
TAG_ERROR = "slocast.error"
TAG_DECISION_ID = "slocast.decision_id"
TAG_PROMOTED = "slocast.promoted"
TAG_WINNER = "slocast.winner"
TAG_WINNER_VERSION = "slocast.winner_version"
TAG_TRIGGER = "slocast.trigger"
# "false" until model-selected is acknowledged by the broker, then "true";
# "n/a" when nothing was promoted, "superseded" when a later decision moved the alias.
TAG_PUBLISHED = "slocast.published"
MODEL_ROLES = ("baseline", "candidate")
# A trainer's run older than this is no live consumer's: a handler busy longer than the
# consumer's max.poll.interval.ms (1 h) has lost its partition to another trainer.
STALE_RUN_SECONDS = 3600.0


def idempotency_key(
    dataset_id: str, family: str, seed: int, code_version: str = __version__
) -> str:
    """Same dataset, family, seed and code: same key, so a redelivery trains nothing."""
    text = f"{dataset_id}:{family}:{seed}:{code_version}"
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DecisionRecord:
    run_id: str
    start_ms: int
    tags: dict[str, str]

    @property
    def decision_id(self) -> str:
        return self.tags.get(TAG_DECISION_ID, "")

    @property
    def published(self) -> str:
        return self.tags.get(TAG_PUBLISHED, "")

    @property
    def promoted(self) -> bool:
        return self.tags.get(TAG_PROMOTED) == "true"


class RegistryState:
    """Queries over runs and versions tagged by :mod:`slocast.adapters.registry`."""

    def __init__(self, registry: ModelRegistry, namespace: str) -> None:
        self.registry = registry
        self.client = registry.client
        self.experiment_id = registry.experiment_id
        self.namespace = namespace
        self._mine = f"tags.`{TAG_NAMESPACE}` = '{namespace}'"

    @property
    def tags(self) -> dict[str, str]:
        """Tags every run or version logged for this namespace carries."""
        return {TAG_NAMESPACE: self.namespace}

    # --- trainers -----------------------------------------------------------------
    def version_for_key(self, task: str, key: str) -> VersionRef | None:
        found = self.client.search_model_versions(
            f"name = '{registered_name(task)}' and tags.`{TAG_KEY}` = '{key}' and {self._mine}"
        )
        if not found:
            return None
        mv = min(found, key=lambda v: int(v.version))  # the first registration wins
        return VersionRef(task, str(mv.version), mv.run_id, mv.source, dict(mv.tags))

    def failed_run_for_key(self, key: str) -> tuple[str, str] | None:
        runs = self.runs(
            f"tags.`{TAG_KEY}` = '{key}' and tags.`{TAG_ROLE}` = 'failed' and {self._mine}"
        )
        if not runs:
            return None
        return runs[0].info.run_id, runs[0].data.tags.get(TAG_ERROR, "")

    def log_failed_run(
        self, *, task: str, family: str, dataset_id: str, key: str, error: str
    ) -> str:
        """Record a training failure, so the evaluator stops waiting for this family."""
        tags = {
            TAG_TASK: task,
            TAG_FAMILY: family,
            TAG_DATASET: dataset_id,
            TAG_ROLE: "failed",
            TAG_KEY: key,
            TAG_ERROR: error[:4000],
            **self.tags,
        }
        run = self.client.create_run(
            self.experiment_id, tags=tags, run_name=f"{family}-{dataset_id[:12]}-failed"
        )
        self.client.set_terminated(run.info.run_id, status="FAILED")
        return run.info.run_id

    def close_stale_runs(
        self, family: str, *, older_than_s: float, key: str | None = None
    ) -> list[str]:
        """Mark this namespace's RUNNING runs of ``family`` (with idempotency ``key``, if
        given) started more than ``older_than_s`` ago as KILLED: a trainer killed while
        logging leaves its run RUNNING forever otherwise. Returns the run ids closed."""
        cutoff_ms = int((time.time() - older_than_s) * 1000)
        filter_string = (
            f"attributes.status = 'RUNNING' and attributes.start_time < {cutoff_ms} "
            f"and tags.`{TAG_FAMILY}` = '{family}' and {self._mine}"
        )
        if key is not None:
            filter_string += f" and tags.`{TAG_KEY}` = '{key}'"
        closed = []
        for run in self.runs(filter_string):
            run_id = run.info.run_id
            self.client.set_tag(
                run_id,
                TAG_ERROR,
                "stale: its trainer stopped while the run was RUNNING; closed by a later trainer",
            )
            self.client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
        return closed

    # --- evaluator ----------------------------------------------------------------
    def dataset_versions(self, task: str, dataset_id: str) -> dict[str, VersionRef]:
        """Latest registered version per family trained on ``dataset_id``."""
        found = self.client.search_model_versions(
            f"name = '{registered_name(task)}' and tags.`{TAG_DATASET}` = '{dataset_id}' "
            f"and {self._mine}"
        )
        latest: dict[str, VersionRef] = {}
        for mv in sorted(found, key=lambda v: int(v.version)):
            tags = dict(mv.tags)
            if tags.get(TAG_ROLE) in MODEL_ROLES and tags.get(TAG_FAMILY):
                latest[tags[TAG_FAMILY]] = VersionRef(
                    task, str(mv.version), mv.run_id, mv.source, tags
                )
        return latest

    def failed_families(self, task: str, dataset_id: str) -> dict[str, str]:
        runs = self.runs(
            f"tags.`{TAG_TASK}` = '{task}' and tags.`{TAG_DATASET}` = '{dataset_id}' "
            f"and tags.`{TAG_ROLE}` = 'failed' and {self._mine}"
        )
        return {r.data.tags.get(TAG_FAMILY, "?"): r.data.tags.get(TAG_ERROR, "") for r in runs}

    def first_result_ms(self, task: str, dataset_id: str) -> int | None:
        """When the first trainer result for the dataset was logged (the deadline's origin)."""
        runs = self.runs(
            f"tags.`{TAG_TASK}` = '{task}' and tags.`{TAG_DATASET}` = '{dataset_id}' "
            f"and {self._mine}"
        )
        starts = [
            r.info.start_time for r in runs if r.data.tags.get(TAG_ROLE) in (*MODEL_ROLES, "failed")
        ]
        return min(starts) if starts else None

    def decision(self, task: str, dataset_id: str) -> DecisionRecord | None:
        """The evaluator's decision for the dataset (the first one, if ever more)."""
        runs = self.runs(
            f"tags.`{TAG_TASK}` = '{task}' and tags.`{TAG_DATASET}` = '{dataset_id}' "
            f"and tags.`{TAG_ROLE}` = 'decision' and {self._mine}"
        )
        runs = [r for r in runs if TAG_PUBLISHED in r.data.tags]  # services' decisions only
        if not runs:
            return None
        run = min(runs, key=lambda r: r.info.start_time)
        return DecisionRecord(run.info.run_id, run.info.start_time, dict(run.data.tags))

    def decision_by_id(self, decision_id: str) -> DecisionRecord | None:
        runs = self.runs(
            f"tags.`{TAG_DECISION_ID}` = '{decision_id}' and tags.`{TAG_ROLE}` = 'decision' "
            f"and {self._mine}"
        )
        if not runs:
            return None
        run = min(runs, key=lambda r: r.info.start_time)
        return DecisionRecord(run.info.run_id, run.info.start_time, dict(run.data.tags))

    def record_decision(
        self, task: str, dataset_id: str, tags: dict[str, str], document: dict
    ) -> DecisionRecord:
        """One run per decision; every field the follow-up steps need is in its tags."""
        all_tags = {
            TAG_TASK: task,
            TAG_DATASET: dataset_id,
            TAG_ROLE: "decision",
            **tags,
            **self.tags,
        }
        run = self.client.create_run(
            self.experiment_id, tags=all_tags, run_name=f"decision-{dataset_id[:12]}"
        )
        self.client.log_dict(run.info.run_id, document, "decision.json")
        self.client.set_terminated(run.info.run_id)
        return DecisionRecord(run.info.run_id, run.info.start_time, all_tags)

    def set_published(self, record: DecisionRecord, value: str) -> None:
        self.client.set_tag(record.run_id, TAG_PUBLISHED, value)

    def unpublished_decisions(self) -> list[DecisionRecord]:
        runs = self.runs(
            f"tags.`{TAG_ROLE}` = 'decision' and tags.`{TAG_PUBLISHED}` = 'false' and {self._mine}"
        )
        return [DecisionRecord(r.info.run_id, r.info.start_time, dict(r.data.tags)) for r in runs]

    def datasets_with_results(self, since_s: float) -> list[tuple[str, str]]:
        """(task, dataset id) pairs with trainer results logged in the last ``since_s``."""
        since_ms = int((time.time() - since_s) * 1000)
        runs = self.runs(f"attributes.start_time > {since_ms} and {self._mine}")
        pairs = {
            (r.data.tags.get(TAG_TASK, ""), r.data.tags.get(TAG_DATASET, ""))
            for r in runs
            if r.data.tags.get(TAG_ROLE) in (*MODEL_ROLES, "failed")
        }
        return sorted(p for p in pairs if all(p))

    def runs(self, filter_string: str) -> list:
        out = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=1000, page_token=token
            )
            out.extend(page)
            token = page.token
            if not token:
                return out
