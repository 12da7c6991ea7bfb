"""The latency training server (default port 8000): HTTP edge of the trainer.

Handlers validate, publish to the sample stream and report; the learning happens in
:class:`slocast.latency.trainer.StreamingTrainer`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

from slocast.hot_routes import JsonBodies
from slocast.latency.bundle import (
    MODEL_TYPE,
    PUBLIC_OBJECTIVE,
    BundleError,
    bundle_file,
    published_manifest,
)
from slocast.latency.features import FEATURE_NAMES, KV_EDGES
from slocast.latency.http_common import (
    METRICS_RESPONSES,
    BodyLimit,
    admin_denied,
    document_bodies,
    error_responses,
    install_validation_handler,
    json_response,
    unsupported_media_type,
)
from slocast.latency.model import TARGETS, candidates
from slocast.latency.published import (
    MODEL_NAMES,
    PublishedModel,
    PublishedModels,
    model_file_info,
    regime_counts_by_bucket,
)
from slocast.latency.schema import (
    BulkTrainingRequest,
    FlushBody,
    ValidationFailure,
    decode_flush,
    decode_samples,
    openapi_body,
)
from slocast.latency.stream import InProcessStream, KafkaStream, SampleStream, StreamFull
from slocast.latency.trainer import StreamingTrainer
from slocast.settings import LatencyTrainingSettings

FLUSH_FIELDS = ("flush_training_data", "flush_test_data", "flush_metrics")
KV_BUCKETS = len(KV_EDGES) + 1
TREE_ENDPOINTS = {f"{t}_trees": f"/model/{t}/xgb/json" for t in TARGETS}


def make_stream(settings: LatencyTrainingSettings) -> SampleStream:
    if settings.kafka_bootstrap:
        return KafkaStream(settings.kafka_bootstrap, settings.kafka_topic)
    return InProcessStream(settings.queue_samples)


class _Metrics:
    """Prometheus metrics of one training server (own registry: no globals)."""

    def __init__(self, trainer: StreamingTrainer) -> None:
        self.registry = CollectorRegistry()
        self.accepted = Counter(
            "slocast_latency_samples_accepted",
            "Training samples accepted over HTTP.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "slocast_latency_requests_rejected",
            "Training requests rejected (4xx/503).",
            ["reason"],
            registry=self.registry,
        )
        window = Gauge(
            "slocast_latency_window_samples",
            "Rows in the training window.",
            ["target", "split"],
            registry=self.registry,
        )
        retrains = Gauge(
            "slocast_latency_retrains",
            "Retrains since start by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        pinball = Gauge(
            "slocast_latency_eval_pinball_ms",
            "Pinball loss on fresh held-out rows at the last retrain.",
            ["target", "model"],
            registry=self.registry,
        )
        cover = Gauge(
            "slocast_latency_eval_coverage",
            "Candidate coverage on fresh held-out rows at the last retrain.",
            ["target"],
            registry=self.registry,
        )
        ingested = Gauge(
            "slocast_latency_samples_ingested",
            "Samples the trainer consumed from the stream.",
            registry=self.registry,
        )

        retrain_seconds = Gauge(
            "slocast_latency_last_retrain_seconds",
            "Duration of the last retrain (fit, evaluate, publish, compile).",
            registry=self.registry,
        )
        dropped = Gauge(
            "slocast_latency_samples_dropped_by_flush",
            "Queued samples dropped because a flush came after their publication.",
            registry=self.registry,
        )
        aci_shift = Gauge(
            "slocast_latency_aci_shift",
            "Shift of the served offsets (normalised units) that adaptive conformal "
            "inference finds on the newest observed misses; published as a recalibrated "
            "bundle beyond +-0.02. Absent until 500 residuals were seen.",
            ["target"],
            registry=self.registry,
        )
        aci_alpha = Gauge(
            "slocast_latency_aci_alpha",
            "Running miscoverage level of adaptive conformal inference (1 - quantile "
            "while the served bound covers as intended).",
            ["target"],
            registry=self.registry,
        )
        self.registry.register(_LiveCoverage(trainer))

        invalid = Gauge(
            "slocast_latency_samples_dropped_invalid",
            "Consumed samples the trainer dropped as out of range or not finite "
            "(HTTP validates them; anything can arrive on a Kafka topic).",
            registry=self.registry,
        )
        invalid_batches = Gauge(
            "slocast_latency_batches_dropped_invalid",
            "Consumed messages dropped whole: not a sample batch.",
            registry=self.registry,
        )

        def refresh() -> None:
            for target in TARGETS:
                for split, n in trainer.windows[target].counts().items():
                    window.labels(target, split).set(n)
            state = trainer.state
            # Copies: the retrain thread updates these while a scrape reads them.
            for outcome, n in dict(state.retrains).items():
                retrains.labels(outcome).set(n)
            for target, e in dict(state.last_evaluations).items():
                pinball.labels(target, "candidate").set(e.candidate_pinball)
                pinball.labels(target, "incumbent").set(e.incumbent_pinball)
                cover.labels(target).set(e.candidate_coverage)
            ingested.set(trainer.samples_ingested)
            dropped.set(trainer.samples_dropped_by_flush)
            invalid.set(trainer.samples_dropped_invalid)
            invalid_batches.set(
                trainer.batches_dropped_invalid + getattr(trainer.stream, "undecodable", 0)
            )
            if trainer.retrain_seconds:
                retrain_seconds.set(trainer.retrain_seconds[-1])
            aci_shift.clear()
            for target in TARGETS:
                shift = trainer.aci_shift(target)
                if shift is not None:
                    aci_shift.labels(target).set(shift)
                aci_alpha.labels(target).set(trainer.aci_alpha(target))

        self.refresh = refresh


class _LiveCoverage:
    """Counters kept by the trainer, exported as counters (rate() over them is the
    live coverage: covered / observed)."""

    def __init__(self, trainer: StreamingTrainer) -> None:
        self.trainer = trainer

    def describe(self):
        return []

    def collect(self):
        trainer = self.trainer
        observed = CounterMetricFamily(
            "slocast_latency_live_observed",
            "Arriving training samples with an observed value, compared with the bound "
            "of the trained model serving when they arrived.",
            labels=["target"],
        )
        covered = CounterMetricFamily(
            "slocast_latency_live_covered",
            "Of those, samples whose actual value was at or under the served bound.",
            labels=["target"],
        )
        for target in TARGETS:
            observed.add_metric([target], trainer.live_observed[target])
            covered.add_metric([target], trainer.live_covered[target])
        recalibrations = CounterMetricFamily(
            "slocast_latency_recalibrations",
            "Bundles published with offsets shifted by adaptive conformal inference "
            "(the served coverage drifted from the target).",
        )
        recalibrations.add_metric([], trainer.recalibrations)
        return [observed, covered, recalibrations]


def upstream_metric_lines(
    trainer: StreamingTrainer, published: PublishedModel | None, quantile: float
) -> list[str]:
    """The upstream predictor's metric families, which operators' dashboards chart.

    Written by hand because upstream emits unlabelled samples as ``name{}``, which
    dashboards and the upstream client match literally (prometheus_client would
    write ``name``); both forms are valid exposition format.
    """
    lines = [
        "# HELP model_type Model family serving (upstream llm-d family).",
        "# TYPE model_type gauge",
        f'model_type{{type="{MODEL_TYPE}"}} 1',
        "# HELP objective_type What the served predictions are (quantile or mean).",
        "# TYPE objective_type gauge",
        f'objective_type{{type="{PUBLIC_OBJECTIVE}"}} 1',
        "# HELP model_quantile Quantile of the served bounds.",
        "# TYPE model_quantile gauge",
        f"model_quantile{{}} {quantile}",
        "# HELP ensemble_active 1 when gated queue/no-queue ensembles serve (never here).",
        "# TYPE ensemble_active gauge",
        "ensemble_active{} 0",
        "# HELP ensemble_mode 1 when gated ensembles are configured (never here).",
        "# TYPE ensemble_mode gauge",
        "ensemble_mode{} 0",
    ]
    for target in TARGETS:
        importances = (
            published.importances(target)
            if published is not None
            else dict.fromkeys(FEATURE_NAMES, 0.0)
        )
        lines += [
            f"# HELP {target}_importance Share of the published {target.upper()} "
            "model's split gain per feature.",
            f"# TYPE {target}_importance gauge",
        ]
        lines += [f'{target}_importance{{feature="{f}"}} {v:.6f}' for f, v in importances.items()]
    lines += [
        "# HELP training_samples_count Training rows in the window per target and regime.",
        "# TYPE training_samples_count gauge",
    ]
    for target in TARGETS:
        counts = regime_counts_by_bucket(trainer.windows[target].regime_counts("train"), KV_BUCKETS)
        lines += [
            f'training_samples_count{{model="{target}",queue_bucket="{q}",cache_bucket="{c}"}} {n}'
            for (q, c), n in counts.items()
        ]
    return lines


def create_training_app(settings: LatencyTrainingSettings) -> FastAPI:
    trainer = StreamingTrainer(settings, make_stream(settings))
    metrics = _Metrics(trainer)
    published = PublishedModels(settings.model_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        settings.model_dir.mkdir(parents=True, exist_ok=True)
        trainer.start()
        yield
        trainer.stop()

    app = FastAPI(title="slocast latency training server", lifespan=lifespan)
    app.state.trainer = trainer
    install_validation_handler(app)
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        on_too_large=lambda _path: metrics.rejected.labels("too_large").inc(),
    )
    app.add_middleware(JsonBodies, unsupported=unsupported_media_type)
    document_bodies(app)

    @app.post(
        "/add_training_data_bulk",
        status_code=202,
        openapi_extra=openapi_body(BulkTrainingRequest),
        responses=error_responses(413, 415, 422, 503),
    )
    async def add_training_data_bulk(request: Request) -> Response:
        try:
            cols = decode_samples(await request.body())
        except ValidationFailure:
            metrics.rejected.labels("invalid").inc()
            raise
        try:
            trainer.stream.publish(cols)
        except StreamFull as exc:
            metrics.rejected.labels("backpressure").inc()
            return json_response({"detail": str(exc)}, status_code=503)
        n = int(cols["kv_cache_percentage"].shape[0])
        metrics.accepted.inc(n)
        return json_response({"message": f"Accepted {n} training samples."}, status_code=202)

    @app.post(
        "/flush",
        openapi_extra=openapi_body(FlushBody, required=False),
        responses=error_responses(401, 413, 415, 422),
    )
    async def flush(request: Request) -> Response:
        denied = admin_denied(request, settings.admin_token)
        if denied is not None:
            return denied
        options = decode_flush(await request.body())
        flushed_at, dropped = trainer.flush(
            options.flush_training_data, options.flush_test_data, options.flush_metrics
        )

        def count(target: str, splits: tuple[str, ...]) -> int:
            return sum(dropped[target].get(s, 0) for s in splits)

        held_out = ("calibration", "evaluation")
        result = {
            "ttft_training_samples_flushed": count("ttft", ("train",)),
            "tpot_training_samples_flushed": count("tpot", ("train",)),
            "ttft_test_samples_flushed": count("ttft", held_out),
            "tpot_test_samples_flushed": count("tpot", held_out),
        }
        anything = any(getattr(options, f) for f in FLUSH_FIELDS)
        return json_response(
            {
                "success": True,
                "flushed_at": _iso(flushed_at),
                "reason": options.reason,
                **result,
                "metrics_cleared": options.flush_metrics,
                "message": (
                    f"Successfully flushed {sum(result.values())} samples"
                    if anything
                    else "No data flushed"
                ),
            }
        )

    @app.get("/data/status")
    async def data_status() -> Response:
        counts = {t: trainer.windows[t].counts() for t in TARGETS}

        def block(splits: tuple[str, ...]) -> dict[str, int]:
            ttft = sum(counts["ttft"][s] for s in splits)
            tpot = sum(counts["tpot"][s] for s in splits)
            return {"ttft_samples": ttft, "tpot_samples": tpot, "total_samples": ttft + tpot}

        state = trainer.state
        train_regimes = regime_counts_by_bucket(
            trainer.windows["ttft"].regime_counts("train"), KV_BUCKETS
        )
        evaluations = dict(state.last_evaluations)
        return json_response(
            {
                "training_data": block(("train",)),
                "test_data": block(("calibration", "evaluation")),
                # One calibrated model per target: no gated ensembles.
                "ensemble": {"ensemble_mode": False, "ensemble_active": False},
                # Held-out evaluations kept (the last retrain's, until flushed).
                "metrics": {
                    **{f"{t}_scores_count": int(t in evaluations) for t in TARGETS},
                    "last_evaluation": {t: e.__dict__ for t, e in evaluations.items()},
                },
                # TTFT training rows per regime (queue depth bucket x KV bucket).
                "bucket_distribution": {
                    f"queue_{q}_cache_{c}": n for (q, c), n in train_regimes.items() if n
                },
                "model_ready": state.serving_version is not None,
                "model_version": state.serving_version,
                "model_data_since": _iso(state.serving_data_since),
                "last_retrain": state.last_retrain,
                "samples_ingested": trainer.samples_ingested,
            }
        )

    @app.get("/")
    async def root() -> Response:
        return json_response(
            {
                "message": "slocast latency training server",
                "model_type": MODEL_TYPE,
                "objective_type": PUBLIC_OBJECTIVE,
                "quantile": settings.quantile,
                "description": f"Learns the P{settings.quantile * 100:g} of TTFT and TPOT "
                "online; docs/latency.md",
            }
        )

    @app.get("/model/download/info")
    async def model_info() -> Response:
        state = trainer.state
        current = published.current()
        return json_response(
            {
                "model_type": MODEL_TYPE,
                "objective_type": PUBLIC_OBJECTIVE,
                "objectives": (
                    {t: m.objective for t, m in current.targets.items()} if current else None
                ),
                "quantile": settings.quantile,
                # What the promotion rule chooses from (SLOCAST_LATENCY_MONOTONE).
                "monotone": settings.monotone,
                "candidates": {
                    t: [p.label for p in candidates(t, settings.monotone)] for t in TARGETS
                },
                "available_endpoints": {
                    "trees": TREE_ENDPOINTS,
                    "models": "/models/list",
                    "download": {t: f"/model/{t}/download" for t in TARGETS},
                },
                "model_status": {f"{t}_model_ready": current is not None for t in TARGETS},
                "model_version": None if current is None else current.version,
                "model_ready": current is not None,
                "evaluation": {t: e.__dict__ for t, e in state.last_evaluations.items()},
            }
        )

    @app.get("/models/list")
    async def models_list() -> Response:
        current = published.current()
        return json_response(
            {
                "models": {name: model_file_info(current, name) for name in MODEL_NAMES},
                "model_type": MODEL_TYPE,
                "quantile": settings.quantile,
                "model_version": None if current is None else current.version,
                "server_time": datetime.now(UTC).isoformat(),
            }
        )

    def unknown_model(name: str) -> Response:
        return json_response(
            {"detail": f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}"}, 404
        )

    def not_trained(name: str) -> Response:
        return json_response(
            {"detail": f"model {name!r} does not exist yet: no model has been trained"}, 404
        )

    @app.get("/model/{name}/info", responses=error_responses(404))
    async def model_file(name: str) -> Response:
        if name not in MODEL_NAMES:
            return unknown_model(name)
        current = published.current()
        info = model_file_info(current, name)
        if not info["exists"]:
            return not_trained(name)
        return json_response(
            {
                "model_name": name,
                **info,
                "model_version": current.version,
                "model_type": MODEL_TYPE,
                "quantile": settings.quantile,
                "objective": current.targets[name].objective,
            }
        )

    @app.get("/model/{name}/download", responses=error_responses(404))
    async def model_download(name: str) -> Response:
        if name not in MODEL_NAMES:
            return unknown_model(name)
        current = published.current()
        if current is None or name not in TARGETS:
            return not_trained(name)
        return Response(
            current.document(name),
            media_type="application/json",
            headers={
                "content-disposition": f'attachment; filename="{name}-{current.version}.json"'
            },
        )

    def tree_dump(target: str) -> Response:
        current = published.current()
        if current is None:
            return json_response(
                {"detail": f"{target.upper()} model not available: none trained yet"}, 404
            )
        return Response(current.tree_dump(target), media_type="application/json")

    # The published bundle, file by file, for prediction servers without the shared
    # model directory (slocast.latency.model_sync; docs/latency.md).
    @app.get(
        "/bundle/current",
        responses={
            304: {"description": "The published manifest is the one `If-None-Match` names."},
            **error_responses(404, 503),
        },
    )
    async def bundle_manifest(request: Request) -> Response:
        try:
            found = published_manifest(settings.model_dir)
        except BundleError as exc:
            return json_response({"detail": f"the published bundle is being replaced: {exc}"}, 503)
        if found is None:
            return json_response({"detail": "no model has been published yet"}, 404)
        pointer, raw = found
        etag = f'"{pointer.manifest_sha256}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(raw, media_type="application/json", headers={"ETag": etag})

    @app.get("/bundle/{version}/{name}", responses=error_responses(404))
    async def bundle_member(version: str, name: str) -> Response:
        body = bundle_file(settings.model_dir, version, name)
        if body is None:
            return json_response(
                {"detail": f"bundle {version!r} has no file {name!r} (pruned, or never listed)"},
                404,
            )
        return Response(body, media_type="application/octet-stream")

    @app.get("/model/ttft/xgb/json", responses=error_responses(404))
    async def ttft_trees() -> Response:
        return tree_dump("ttft")

    @app.get("/model/tpot/xgb/json", responses=error_responses(404))
    async def tpot_trees() -> Response:
        return tree_dump("tpot")

    @app.get("/healthz")
    async def healthz() -> Response:
        return json_response({"status": "ok"})

    @app.get("/readyz", responses=error_responses(503))
    async def readyz() -> Response:
        if all(t.is_alive() for t in trainer._threads):
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "reason": "trainer threads stopped"}, 503)

    @app.get("/metrics", response_class=PlainTextResponse, responses=METRICS_RESPONSES)
    async def prometheus() -> Response:
        metrics.refresh()
        upstream = upstream_metric_lines(trainer, published.current(), settings.quantile)
        body = generate_latest(metrics.registry) + ("\n".join(upstream) + "\n").encode()
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()
