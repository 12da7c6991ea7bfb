"""Logging a trained model to MLflow and registering it as a version."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slocast.adapters.registry import ModelRegistry, VersionRef
from slocast.core.schema import TARGET_COLUMNS
from slocast.models.bundle import save_bundle
from slocast.preprocess.dataset import ProcessedDataset
from slocast.train.stage import TrainedModel


def log_trained_model(
    registry: ModelRegistry,
    model: TrainedModel,
    *,
    dataset: ProcessedDataset,
    task: str,
    role: str,
    bundle_dir: Path,
    extra_tags: dict[str, str] | None = None,
) -> VersionRef:
    """Save the bundle, log params/metrics/plot, register a version."""
    save_bundle(model.bundle, bundle_dir)
    params = {
        **model.report.params,
        "window": dataset.config.window,
        "horizon": dataset.config.horizon,
        "quantiles": list(dataset.config.quantiles),
        "n_calibration": model.bundle.calibration.n_calibration,
        "calibration_blocks": dataset.config.calibration_blocks,
    }
    metrics = {
        **model.val_metrics,
        **model.report.metrics,
        "train_seconds": model.train_seconds,
        "calibration_seconds": model.calibration_seconds,
    }
    for level, offsets in model.bundle.calibration.offsets.items():
        for target, value in zip(TARGET_COLUMNS, np.asarray(offsets)[0], strict=True):
            metrics[f"conformal_offset_{level:g}_{target}"] = float(value)
    import matplotlib.pyplot as plt

    figure = validation_figure(dataset, model)
    try:
        return registry.log_model_run(
            task=task,
            family=model.family,
            dataset_id=dataset.dataset_id,
            bundle_dir=bundle_dir,
            params=params,
            metrics=metrics,
            role=role,
            figures={"validation_forecast": figure},
            extra_tags=extra_tags,
        )
    finally:
        plt.close(figure)


def validation_figure(dataset: ProcessedDataset, model: TrainedModel):
    """Forecast vs actual on the validation split (step 1), one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ends = dataset.ends("val")
    times = dataset.times[ends]
    truth = dataset.truth(ends)[:, 0]
    point = model.val_prediction[:, 0]
    upper = (
        model.bundle.upper(model.val_prediction, 0.9, dataset.values, ends)[:, 0]
        if 0.9 in model.bundle.calibration.offsets
        else None
    )
    fig, axes = plt.subplots(
        len(TARGET_COLUMNS), 1, figsize=(11, 2 * len(TARGET_COLUMNS)), sharex=True
    )
    for k, (ax, target) in enumerate(zip(axes, TARGET_COLUMNS, strict=True)):
        ax.plot(times, truth[:, k], color="black", lw=0.5, label="actual")
        ax.plot(times, point[:, k], lw=0.5, label="forecast")
        if upper is not None:
            ax.fill_between(times, point[:, k], upper[:, k], alpha=0.25, label="P90 bound")
        ax.set_ylabel(target)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[0].set_title(f"{model.family}: validation forecast vs actual")
    fig.tight_layout()
    return fig
