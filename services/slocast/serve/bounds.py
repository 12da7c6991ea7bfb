"""Calibrated upper bounds of every requested level in one vectorised step.

The same arithmetic as :meth:`ModelBundle.upper` (``point + offset * scale``, with
``scale`` :func:`residual_scale` and the offset picked per cell by the bin of its
:func:`predicted_change` when the calibration is grouped), with the calibration's
tables stacked once at load and the clipped target windows gathered once per call,
not per level and per function. ``tests/serve/test_bounds.py`` checks the two are
equal. Bounds are raised to the targets' floor, as point forecasts are.
"""

from __future__ import annotations

import numpy as np

from slocast.core.features import spec_arrays
from slocast.models.bundle import ModelBundle


class Bounds:
    """Upper bounds of one bundle; ``levels`` lists the calibrated levels in order."""

    def __init__(self, bundle: ModelBundle) -> None:
        calibration, spec = bundle.calibration, bundle.spec
        arrays = spec_arrays(spec)
        self._window = spec.window
        self._steps = np.arange(spec.window)[None, :]
        self._targets = arrays.target_index
        self._caps = arrays.target_caps
        self._floor = arrays.residual_floor
        shape = (spec.horizon, len(spec.targets))
        self.levels: tuple[float, ...] = tuple(calibration.levels)
        self._normalised = calibration.normalised
        self._spec = spec
        self._grouped = calibration.grouped
        # (levels, 1, horizon, K): broadcast over the windows of a call.
        self._offsets = np.stack(
            [np.broadcast_to(calibration.offsets[q], shape) for q in self.levels]
        )[:, None]
        if self._grouped:
            edges = np.broadcast_to(calibration.edges, (calibration.edges.shape[0], *shape))
            self._edges = np.ascontiguousarray(np.moveaxis(edges, 0, -1))  # (H, K, bins - 1)
            bins = self._edges.shape[-1] + 1
            # (levels, H, K, bins)
            self._table = np.stack(
                [
                    np.moveaxis(
                        np.broadcast_to(calibration.group_offsets[q], (bins, *shape)), 0, -1
                    )
                    for q in self.levels
                ]
            )
            self._h = np.arange(shape[0])[None, :, None]
            self._k = np.arange(shape[1])[None, None, :]
        else:  # one bin: no edges, the table is the offsets
            self._edges = np.empty((*shape, 0))
            self._table = np.ascontiguousarray(self._offsets[:, 0, ..., None], np.float64)

    def floor_forecast(self, upper: np.ndarray) -> np.ndarray:
        """``upper`` raised to the targets' floor in place (``FeatureSpec.floor_forecast``)."""
        return self._spec.floor_forecast(upper)

    def kernel_arguments(self) -> dict[str, np.ndarray | int | bool]:
        """The tables of :func:`_core.lte_bounds` (``serve/kernels.py`` binds it)."""
        return {
            "targets": self._targets.astype(np.int64),
            "caps": np.ascontiguousarray(self._caps, np.float64),
            "floor": np.ascontiguousarray(self._floor, np.float64),
            "edges": np.ascontiguousarray(self._edges, np.float64),
            "table": np.ascontiguousarray(self._table, np.float64),
            "window": int(self._window),
            "normalised": bool(self._normalised),
        }

    def upper(
        self, point: np.ndarray, values: np.ndarray, ends: np.ndarray, which: list[int]
    ) -> np.ndarray:
        """Bounds ``(len(which), N, horizon, K)`` at the levels ``self.levels[i]`` for
        ``i`` in ``which``; ``ValueError`` when the window's scale is not finite and
        positive (only absurd inputs, e.g. -1e308)."""
        if not (self._normalised or self._grouped):
            return self._spec.floor_forecast(point + self._offsets[which])
        w = self._window
        if ends.size == 1:  # a view, not a gather
            rows = values[ends[0] - w : ends[0]][None]
        else:
            rows = values[ends[:, None] - w + self._steps]
        # residual_scale: the window mean of the clipped targets' magnitude + a floor.
        targets = np.minimum(rows[..., self._targets], self._caps)
        scale = np.add.reduce(np.abs(targets), axis=1)
        scale /= w
        scale += self._floor
        if self._normalised and not (scale.min() > 0 and scale.max() < np.inf):
            raise ValueError("conformal scale must be finite and positive")
        scale = scale[:, None, :]
        if self._grouped:
            # predicted_change: from the last clipped target, in units of the scale.
            change = (point - targets[:, -1, None, :]) / scale
            bins = (change[..., None] >= self._edges).sum(axis=-1)  # (N, H, K)
            offset = self._table[which][:, self._h, self._k, bins]
        else:
            offset = self._offsets[which]
        upper = point + offset * scale if self._normalised else point + offset
        return self._spec.floor_forecast(upper)
