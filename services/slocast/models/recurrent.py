"""GRU and LSTM forecasters: trained with PyTorch, served through ONNX Runtime.

One implementation serves both families; only the recurrent cell differs.

Inputs per window (built by :func:`model_inputs`, shared by fit and predict):
- ``sequence`` (N, window, C + 6): the scaled input rows of
  :meth:`FeatureSpec.scale_inputs` plus the calendar features of each input row;
- ``context`` (N, 6 * horizon + K): the calendar features of every forecast row,
  and the last observed targets on the *target* scale (clipped at the caps), so
  the head has a direct persistence path in the units it predicts.

The network outputs ``horizon * K`` linearly standardised targets; it is trained
with MSE on that scale (aligned with RMSE in original units), masked where the
truth was not observed.

With ``instance_norm`` (RevIN-style per-window normalisation, issue 12) each window
is expressed relative to its own level ``L`` (per target: the window's mean,
floored): target input columns become ``log((x + f) / (L + f))`` instead of the
globally standardised (and capped) values, the context's last targets
``last / L - 1``, and the network predicts ``y / L - 1``, mapped back as
``L * (1 + output)``. The loss weights each window by ``(L / target_scale)^2``, so it
is still squared error in original units. A model so trained reads no absolute
level, so a site whose traffic moves to a level it never saw is forecast in the
same relative terms. The transform lives in :func:`model_inputs` and
:meth:`RecurrentForecaster.predict`, the path the evaluator and the server share.
Whether a family uses it is decided per site on validation, each option scored by
its worst case over the validation windows and level-shifted copies of them
(``LEVEL_SHIFTS``, ``NORM_MARGIN``): a shift may come after all the data we fit on,
where validation cannot show it, so global scaling is kept only when it holds
under shifts too.

A fit is a seed ensemble of ``PipelineConfig.recurrent_seeds`` networks (each
early-stopped on validation, best epoch restored) whose outputs are averaged
inside one exported graph. After fitting, the network is exported to ONNX and every prediction runs
through ONNX Runtime, exactly as the prediction server does. PyTorch is imported
only inside :meth:`RecurrentForecaster.fit` and the torch-side helpers: loading
and predicting need just NumPy and ONNX Runtime.
"""

from __future__ import annotations

import io
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from slocast.core.features import (
    N_CALENDAR,
    FeatureSpec,
    calendar_features,
    gather_windows,
    target_times,
    window_level,
)
from slocast.core.metrics import nrmse
from slocast.core.schema import FEATURE_COLUMNS, HEADLINE_COLUMNS, TARGET_COLUMNS, TARGET_INDEX
from slocast.models.base import FitReport, Forecaster, Progress
from slocast.preprocess.dataset import ProcessedDataset

ONNX_FILE = "recurrent.onnx"
WEIGHTS_FILE = "recurrent_weights.npz"
PARAMS_FILE = "recurrent.json"
INPUT_NAMES = ("sequence", "context")
OUTPUT_NAME = "forecast"
# ONNX export example batch: >= 2 so no exporter can specialise the graph to batch 1.
_EXPORT_BATCH = 4


@dataclass(frozen=True)
class RecurrentParams:
    """Network and training settings (defaults chosen on PobleSec validation NRMSE).

    Validation headline NRMSE, GRU, seed 0: batch 256 / lr 2e-3 1.0829; lr 1e-3 with
    patience 8 1.0841; batch 512 1.0806 and about half the time per epoch, so 512.
    One layer of 64 keeps a fit (~16 epochs) inside the 45 s budget on 2 cores.

    Attributes:
        hidden: units per recurrent layer.
        layers: stacked recurrent layers.
        dropout: dropout between stacked layers (ignored with one layer).
        batch_size: windows per Adam step.
        learning_rate: Adam step size.
        weight_decay: Adam L2 penalty.
        max_epochs: hard cap on passes over the training windows (bounds fit time).
        patience: epochs without a validation improvement before stopping.
        grad_clip: maximum gradient norm (heavy-tailed bursts make rare huge steps).
        threads: PyTorch intra-op threads while training. Measured here on 2 cores
            with other jobs running: 1 thread 2.3 s/epoch, 2 threads 40-70 s/epoch
            (OpenMP workers spin-wait on ops this small), so 1 unless the cores are free.
        instance_norm: per-window (RevIN-style) normalisation, see the module docstring.
            None (the families' default) chooses per site: one member is trained with
            and one without, and validation headline NRMSE decides (with it only when
            ``NORM_MARGIN`` lower); a fitted model always stores the concrete choice.
        seeds: members of the seed ensemble (set by :meth:`RecurrentForecaster.fit` from
            ``PipelineConfig.recurrent_seeds``); their outputs are averaged.
    """

    hidden: int = 64
    layers: int = 1
    dropout: float = 0.0
    batch_size: int = 512
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    max_epochs: int = 40
    patience: int = 6
    grad_clip: float = 1.0
    threads: int = 1
    instance_norm: bool | None = None
    seeds: int = 1

    @classmethod
    def from_dict(cls, data: dict) -> RecurrentParams:
        # Bundles saved before instance_norm / seed ensembles were one network without it.
        return cls(**{"instance_norm": False, "seeds": 1, **data})


def member_seeds(seed: int, k: int) -> list[int]:
    """Seeds of a ``k``-member seed ensemble for run seed ``seed``.

    Disjoint across run seeds, so runs with seeds 0, 1, 2 (a 3-seed mean) share no
    member; with ``k = 1`` the one member uses ``seed`` itself.
    """
    return [seed * k + i for i in range(k)]


# Per-window normalisation or global scaling is chosen per site on validation, each
# option scored by its worst headline NRMSE over the validation windows as recorded
# and under the level shifts of ``LEVEL_SHIFTS`` (one headline column at a time,
# inputs and truth alike: a site whose traffic moves to a level the fit never saw).
# NRMSE is scale-free, so a model that reads levels only relative to the window
# scores the same on every shifted copy, while a globally scaled network predicts
# the old level there (issue 12: 6x persistence on PobleSec with `up` x0.1 in the
# test file only, a shift validation itself cannot show). Global scaling is kept
# only when its worst case is this much (relative) below per-window normalisation's.
NORM_MARGIN = 0.02
LEVEL_SHIFTS = (0.1, 10.0)


def level_shifted(data: ProcessedDataset) -> list[ProcessedDataset]:
    """Copies of ``data`` with one headline column multiplied by each factor of
    ``LEVEL_SHIFTS`` in every row (inputs and truth)."""
    copies = []
    for column in HEADLINE_COLUMNS:
        j = FEATURE_COLUMNS.index(column)
        for factor in LEVEL_SHIFTS:
            raw, values = data.raw.copy(), data.values.copy()
            raw[:, j] *= factor
            values[:, j] *= factor
            copies.append(replace(data, raw=raw, values=values))
    return copies


def model_inputs(
    spec: FeatureSpec,
    times: np.ndarray,
    values: np.ndarray,
    ends: np.ndarray,
    *,
    instance_norm: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The network's two inputs for windows ending at ``ends`` (float32), and the level.

    The level (N, K) is the per-window normaliser of ``instance_norm`` (None without).
    """
    ends = np.asarray(ends, np.int64)
    n, window, horizon = ends.size, spec.window, spec.horizon
    rows = gather_windows(values, ends, window)
    input_times = gather_windows(np.asarray(times)[:, None], ends, window)[..., 0]
    scaled = spec.scale_inputs(rows)
    future = calendar_features(target_times(times, ends, horizon, spec.step_seconds))
    level = None
    if instance_norm:
        own = np.maximum(rows[..., list(TARGET_INDEX)], 0.0)
        level = window_level(spec, own)
        floor = level - own.mean(axis=1)
        scaled[..., list(TARGET_INDEX)] = np.log((own + floor[:, None]) / level[:, None])
        last = own[:, -1] / level - 1.0
    else:
        last = spec.scale_targets(
            np.minimum(rows[:, -1, :], np.asarray(spec.caps))[:, list(TARGET_INDEX)]
        )
    sequence = np.concatenate([scaled, calendar_features(input_times)], axis=-1)
    context = np.concatenate([future.reshape(n, horizon * N_CALENDAR), last], axis=1)
    return sequence.astype(np.float32), context.astype(np.float32), level


def forecast_units(spec: FeatureSpec, out: np.ndarray, level: np.ndarray | None) -> np.ndarray:
    """Network outputs (N, horizon * K) back to original units (N, horizon, K)."""
    out = np.asarray(out, np.float64).reshape(len(out), spec.horizon, len(TARGET_INDEX))
    if level is None:
        return spec.floor_forecast(spec.unscale_targets(out))
    return spec.floor_forecast(level[:, None, :] * (1.0 + out))


@dataclass
class _Member:
    """One trained network of a seed ensemble."""

    state: dict[str, Any]
    best_epoch: int
    best_loss: float
    curves: dict[str, list[float]]


class RecurrentForecaster(Forecaster):
    """Shared GRU/LSTM implementation; subclasses set :attr:`family` and :attr:`cell`.

    A fit trains ``PipelineConfig.recurrent_seeds`` networks with different seeds
    (each early-stopped on validation) and serves their average as one ONNX graph,
    so a seed ensemble is served exactly like a single network.
    """

    family: ClassVar[str] = "recurrent"
    cell: ClassVar[str] = "GRU"
    default_params: ClassVar[RecurrentParams] = RecurrentParams()

    def __init__(self, spec: FeatureSpec, params: RecurrentParams | None = None) -> None:
        super().__init__(spec)
        self.params = params or self.default_params
        self._onnx: bytes | None = None
        self._session: ort.InferenceSession | None = None
        self._weights: dict[str, np.ndarray] = {}
        self._fit_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ fit
    def fit(
        self, data: ProcessedDataset, *, seed: int, progress: Progress | None = None
    ) -> FitReport:
        return self._fit(
            data,
            data.ends("train"),
            data.ends("val"),
            seeds=member_seeds(seed, data.config.recurrent_seeds),
            progress=progress,
        )

    def refit(
        self, data: ProcessedDataset, train_ends: np.ndarray, *, seed: int
    ) -> RecurrentForecaster:
        epochs = self._fit_info.get("best_epochs")
        if not epochs:
            raise RuntimeError(f"{self.family}: no early-stopped epoch counts to refit with")
        clone = type(self)(self.spec, self.params)
        clone._fit(
            data, train_ends, None, seeds=member_seeds(seed, len(epochs)), epochs=list(epochs)
        )
        return clone

    def _fit(
        self,
        data: ProcessedDataset,
        train_ends: np.ndarray,
        val_ends: np.ndarray | None,
        *,
        seeds: list[int],
        progress: Progress | None = None,
        epochs: list[int] | None = None,
    ) -> FitReport:
        """Members early-stopped on ``val_ends``, or trained exactly ``epochs[i]`` without it."""
        import torch  # training-only dependency: never imported on the serving path

        started = time.perf_counter()
        p = self.params
        if val_ends is None and p.instance_norm is None:
            raise RuntimeError(f"{self.family}: refitting needs a fitted model's instance_norm")
        norms = [p.instance_norm] if p.instance_norm is not None else [False, True]
        old_threads = torch.get_num_threads()
        old_deterministic = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(p.threads)
        torch.use_deterministic_algorithms(True)
        try:
            total_steps = len(seeds) + len(norms) - 1
            done = [0]

            tensors: dict[bool, tuple] = {}

            def member(norm: bool, i: int) -> _Member:
                if norm not in tensors:
                    tensors[norm] = (
                        self._tensors(data, train_ends, norm),
                        None if val_ends is None else self._tensors(data, val_ends, norm),
                    )
                train, val = tensors[norm]
                label = f"seed {seeds[i]}" + (" norm" if norm else "")
                out = _train_member(
                    self.cell,
                    self.spec,
                    p,
                    train,
                    val,
                    seed=seeds[i],
                    epochs=None if epochs is None else int(epochs[i]),
                    progress=None
                    if progress is None
                    else lambda e, msg: progress(done[0], total_steps, f"{label} {msg}"),
                )
                done[0] += 1
                return out

            trials = {norm: member(norm, 0) for norm in norms}
            choice_metrics: dict[str, float] = {}
            if len(norms) > 1:
                # Per site, on validation (and its level-shifted copies): per-window
                # normalisation or global scaling.
                shifted = [data, *level_shifted(data)]
                scores = {
                    norm: [
                        self._val_headline(copy, val_ends, trials[norm].state, norm)
                        for copy in shifted
                    ]
                    for norm in norms
                }
                chosen = not max(scores[False]) < (1.0 - NORM_MARGIN) * max(scores[True])
                choice_metrics = {
                    "val_nrmse_instance_norm_off": scores[False][0],
                    "val_nrmse_instance_norm_on": scores[True][0],
                    "val_nrmse_shifted_worst_instance_norm_off": max(scores[False]),
                    "val_nrmse_shifted_worst_instance_norm_on": max(scores[True]),
                }
            else:
                chosen = norms[0]
            members = [trials[chosen]] + [member(chosen, i) for i in range(1, len(seeds))]
            self.params = replace(p, instance_norm=chosen, seeds=len(seeds))
            net = _build_net(self.cell, self.spec, self.params)
            net.load_state_dict(_ensemble_state([m.state for m in members]))
            net.eval()
            train_seconds = time.perf_counter() - started
            self._weights = {k: v.numpy().copy() for k, v in net.state_dict().items()}
            self._onnx = _export_onnx(net, self.spec)
        finally:
            torch.set_num_threads(old_threads)
            torch.use_deterministic_algorithms(old_deterministic)
        self._session = _session(self._onnx)
        _check_dynamic_batch(self._session, self.spec)
        # Refuse an export that computes something else than the trained network(s).
        probe = (train_ends if val_ends is None else val_ends)[:256]
        served, reference = (
            f(data.times, data.values, probe) for f in (self.predict, self.predict_torch)
        )
        scale = self.spec.scale_targets
        if not np.allclose(scale(served), scale(reference), rtol=1e-4, atol=1e-4):
            raise RuntimeError("ONNX forecasts differ from the PyTorch network's")
        first = members[0]
        metrics = {
            "best_epoch": float(first.best_epoch + 1),
            "epochs": float(len(first.curves["train_loss"])),
            "members": float(len(members)),
            "instance_norm": float(chosen),
            "train_seconds": train_seconds,
            **choice_metrics,
        }
        curves = dict(first.curves)
        for i, m in enumerate(members[1:], start=1):
            curves.update({f"{name}_member{i}": c for name, c in m.curves.items()})
        if val_ends is not None:
            val_pred = self.predict(data.times, data.values, val_ends)[:, 0]
            val_nrmse = nrmse(data.truth(val_ends)[:, 0], val_pred)
            metrics["best_val_loss"] = first.best_loss
            metrics.update(
                {f"val_nrmse_{c}": float(v) for c, v in zip(TARGET_COLUMNS, val_nrmse, strict=True)}
            )
            metrics["val_nrmse_headline"] = float(
                np.mean([val_nrmse[TARGET_COLUMNS.index(c)] for c in HEADLINE_COLUMNS])
            )
        metrics["fit_seconds"] = time.perf_counter() - started
        self._fit_info = {
            "seed": seeds[0],
            "member_seeds": list(seeds),
            "best_epochs": [m.best_epoch + 1 for m in members],
            **metrics,
        }
        return FitReport(
            params={"cell": self.cell, "member_seeds": list(seeds), **asdict(self.params)},
            metrics=metrics,
            curves=curves,
        )

    def _val_headline(
        self, data: ProcessedDataset, ends: np.ndarray, state: dict[str, Any], norm: bool
    ) -> float:
        """Validation headline NRMSE (step 1) of one member network."""
        one = replace(self.params, instance_norm=norm, seeds=1)
        prediction = _torch_forecast(
            self.cell, self.spec, one, state, data.times, data.values, ends
        )
        scores = nrmse(data.truth(ends)[:, 0], prediction[:, 0])
        return float(np.mean([scores[TARGET_COLUMNS.index(c)] for c in HEADLINE_COLUMNS]))

    def _tensors(self, data: ProcessedDataset, ends: np.ndarray, instance_norm: bool) -> tuple:
        import torch

        sequence, context, level = model_inputs(
            self.spec, data.times, data.values, ends, instance_norm=instance_norm
        )
        truth = data.truth(ends)
        if level is None:
            target = self.spec.scale_targets(truth)
            weight = np.ones_like(target)
        else:
            # Predict relative to the window's level; weight so the loss stays
            # squared error in (globally standardised) original units.
            target = truth / level[:, None, :] - 1.0
            weight = np.broadcast_to(
                (level / np.asarray(self.spec.target_scale))[:, None, :] ** 2, target.shape
            )
        target = target.reshape(ends.size, -1)
        # Truth stays NaN where unobserved: those cells are masked out of the loss.
        mask = np.isfinite(target)
        weight = np.where(mask, weight.reshape(ends.size, -1), 0.0)
        return (
            torch.from_numpy(sequence),
            torch.from_numpy(context),
            torch.from_numpy(np.where(mask, target, 0.0).astype(np.float32)),
            torch.from_numpy(weight.astype(np.float32)),
        )

    # -------------------------------------------------------------- predict
    def predict(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise RuntimeError(f"{self.family} forecaster is not fitted")
        if len(ends) == 0:
            return np.empty((0, self.spec.horizon, len(TARGET_INDEX)))
        sequence, context, level = model_inputs(
            self.spec, times, values, ends, instance_norm=bool(self.params.instance_norm)
        )
        out = self._session.run([OUTPUT_NAME], {INPUT_NAMES[0]: sequence, INPUT_NAMES[1]: context})[
            0
        ]
        return forecast_units(self.spec, out, level)

    def predict_torch(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The same forecasts computed by PyTorch from the saved weights (to verify the export)."""
        import torch

        state = {k: torch.from_numpy(v) for k, v in self._weights.items()}
        return _torch_forecast(self.cell, self.spec, self.params, state, times, values, ends)

    # ------------------------------------------------------------ save/load
    def save(self, directory: Path) -> list[str]:
        if self._onnx is None:
            raise RuntimeError(f"{self.family} forecaster is not fitted")
        directory = Path(directory)
        (directory / ONNX_FILE).write_bytes(self._onnx)
        # Plain arrays, no pickle: np.load(..., allow_pickle=False) reads them back.
        with (directory / WEIGHTS_FILE).open("wb") as f:
            np.savez(f, **self._weights)
        meta = {
            "family": self.family,
            "cell": self.cell,
            "params": asdict(self.params),
            "fit": self._fit_info,
        }
        (directory / PARAMS_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return [ONNX_FILE, WEIGHTS_FILE, PARAMS_FILE]

    @classmethod
    def load(cls, directory: Path, spec: FeatureSpec) -> RecurrentForecaster:
        directory = Path(directory)
        meta = json.loads((directory / PARAMS_FILE).read_text())
        if meta["family"] != cls.family:
            raise ValueError(
                f"{directory}: saved family {meta['family']!r}, expected {cls.family!r}"
            )
        model = cls(spec, RecurrentParams.from_dict(meta["params"]))
        model._onnx = (directory / ONNX_FILE).read_bytes()
        model._session = _session(model._onnx)
        with np.load(directory / WEIGHTS_FILE, allow_pickle=False) as arrays:
            model._weights = {k: arrays[k] for k in arrays.files}
        model._fit_info = meta.get("fit", {})
        return model


class GRUForecaster(RecurrentForecaster):
    """GRU; per-window normalisation chosen per site on validation (``instance_norm``)."""

    family = "gru"
    cell = "GRU"


class LSTMForecaster(RecurrentForecaster):
    """LSTM; per-window normalisation chosen per site on validation (``instance_norm``)."""

    family = "lstm"
    cell = "LSTM"


# ---------------------------------------------------------------- helpers
def _session(model: bytes) -> ort.InferenceSession:
    # One thread per serving process: the server scales by processes, not threads.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _check_dynamic_batch(session: ort.InferenceSession, spec: FeatureSpec) -> None:
    """Fail the fit, not the server, if the exported graph is pinned to one batch size."""
    shapes = [i.shape for i in session.get_inputs()]
    for n in (1, 1000):
        feeds = {
            i.name: np.zeros([n, *s[1:]], np.float32)
            for i, s in zip(session.get_inputs(), shapes, strict=True)
        }
        out = session.run([OUTPUT_NAME], feeds)[0]
        if out.shape != (n, spec.horizon * len(TARGET_INDEX)):
            raise RuntimeError(f"exported ONNX graph returned {out.shape} for batch {n}")


def _build_net(cell: str, spec: FeatureSpec, p: RecurrentParams) -> Any:
    """One network, or with ``p.seeds > 1`` the mean of ``p.seeds`` networks' outputs.

    Averaging outputs averages forecasts: both output scales map back to original
    units affinely (:func:`forecast_units`), before the floor.
    """
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            rnn = {"GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[cell]
            self.rnn = rnn(
                len(spec.columns) + N_CALENDAR,
                p.hidden,
                num_layers=p.layers,
                batch_first=True,
                dropout=p.dropout if p.layers > 1 else 0.0,
            )
            context = spec.horizon * N_CALENDAR + len(spec.targets)
            self.head = torch.nn.Sequential(
                torch.nn.Linear(p.hidden + context, p.hidden),
                torch.nn.ReLU(),
                torch.nn.Linear(p.hidden, spec.horizon * len(spec.targets)),
            )

        def forward(self, sequence: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            states, _ = self.rnn(sequence)
            return self.head(torch.cat([states[:, -1], context], dim=1))

    class Mean(torch.nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.members = torch.nn.ModuleList([Net() for _ in range(k)])

        def forward(self, sequence: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(sequence, context) for m in self.members]).mean(dim=0)

    return Net() if p.seeds == 1 else Mean(p.seeds)


def _ensemble_state(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The state dict of :func:`_build_net`'s network for these member states."""
    if len(states) == 1:
        return states[0]
    return {f"members.{i}.{k}": v for i, state in enumerate(states) for k, v in state.items()}


def _torch_forecast(
    cell: str,
    spec: FeatureSpec,
    p: RecurrentParams,
    state: dict[str, Any],
    times: np.ndarray,
    values: np.ndarray,
    ends: np.ndarray,
) -> np.ndarray:
    """Forecasts in original units of the PyTorch network with ``state``."""
    import torch

    net = _build_net(cell, spec, p)
    net.load_state_dict(state)
    net.eval()
    sequence, context, level = model_inputs(
        spec, times, values, ends, instance_norm=bool(p.instance_norm)
    )
    with torch.no_grad():
        out = net(torch.from_numpy(sequence), torch.from_numpy(context)).numpy()
    return forecast_units(spec, out, level)


def _train_member(
    cell: str,
    spec: FeatureSpec,
    p: RecurrentParams,
    train: tuple,
    val: tuple | None,
    *,
    seed: int,
    epochs: int | None,
    progress: Callable[[int, str], None] | None = None,
) -> _Member:
    """One network: early-stopped on ``val`` (best epoch restored), or ``epochs`` without it."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = _build_net(cell, spec, replace(p, seeds=1))
    optimiser = torch.optim.Adam(net.parameters(), lr=p.learning_rate, weight_decay=p.weight_decay)
    max_epochs = p.max_epochs if val is not None else int(epochs)
    n = train[0].shape[0]
    best_loss, best_epoch, best_state = float("inf"), -1, None
    curves: dict[str, list[float]] = {"train_loss": [], "val_loss": []}
    for epoch in range(max_epochs):
        net.train()
        order = torch.from_numpy(rng.permutation(n))
        total, count = 0.0, 0
        for start in range(0, n, p.batch_size):
            idx = order[start : start + p.batch_size]
            loss = _masked_mse(net(train[0][idx], train[1][idx]), train[2][idx], train[3][idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
            optimiser.step()
            total += loss.item() * idx.numel()
            count += idx.numel()
        curves["train_loss"].append(total / count)
        if val is None:
            best_epoch = epoch
            continue
        val_loss = _evaluate(net, val)
        curves["val_loss"].append(val_loss)
        if val_loss < best_loss:
            best_loss, best_epoch = val_loss, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        if progress is not None:
            progress(epoch + 1, f"epoch {epoch + 1}: val loss {val_loss:.4f}")
        if epoch - best_epoch >= p.patience:
            break
    if best_state is None:
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # The best epoch, not the last: the last has drifted past the validation optimum.
    return _Member(best_state, best_epoch, best_loss, curves)


def _masked_mse(pred: Any, target: Any, weight: Any) -> Any:
    """Weighted squared error over the observed cells (weight 0 where unobserved)."""
    return ((pred - target) ** 2 * weight).sum() / (weight > 0).sum().clamp(min=1)


def _evaluate(net: Any, tensors: tuple) -> float:
    import torch

    net.eval()
    with torch.no_grad():
        return float(_masked_mse(net(tensors[0], tensors[1]), tensors[2], tensors[3]))


def _export_onnx(net: Any, spec: FeatureSpec) -> bytes:
    import torch

    example = (
        torch.zeros(_EXPORT_BATCH, spec.window, len(spec.columns) + N_CALENDAR),
        torch.zeros(_EXPORT_BATCH, spec.horizon * N_CALENDAR + len(spec.targets)),
    )
    buffer = io.BytesIO()
    # The TorchScript exporter (dynamo=False) takes ~0.5 s and emits native ONNX
    # GRU/LSTM nodes; the torch.export-based one took 8-20 s here, a third of the
    # fit budget. _check_dynamic_batch verifies the batch axis stays free.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            example,
            buffer,
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={name: {0: "batch"} for name in (*INPUT_NAMES, OUTPUT_NAME)},
        )
    return buffer.getvalue()
