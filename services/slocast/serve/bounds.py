"""Calibrated upper bounds of every requested level in one vectorised step.

The same arithmetic as :meth:`ModelBundle.upper` (``point + offset * scale``, the
offset picked per cell by the bin of its predicted change when the calibration is
grouped), with the calibration's tables stacked once at load instead of per level
and per request. ``tests/serve/test_bounds.py`` checks the two are equal.
"""

from __future__ import annotations

import numpy as np

from slocast.core.features import predicted_change, residual_scale, spec_arrays
from slocast.models.bundle import ModelBundle


class Bounds:
    """Upper bounds of one bundle; ``levels`` lists the calibrated levels in order."""

    def __init__(self, bundle: ModelBundle) -> None:
        calibration, spec = bundle.calibration, bundle.spec
        self._spec = spec
        self._arrays = spec_arrays(spec)
        shape = (spec.horizon, len(spec.targets))
        self.levels: tuple[float, ...] = tuple(calibration.levels)
        self._normalised = calibration.normalised
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

    def upper(
        self, point: np.ndarray, values: np.ndarray, ends: np.ndarray, which: list[int]
    ) -> np.ndarray:
        """Bounds ``(len(which), N, horizon, K)`` at the levels ``self.levels[i]`` for
        ``i`` in ``which``; ``ValueError`` when the window's scale is not finite and
        positive (only absurd inputs, e.g. -1e308)."""
        if not (self._normalised or self._grouped):
            return point + self._offsets[which]
        scale = residual_scale(self._spec, values, ends, self._arrays)
        if self._normalised and not (np.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("conformal scale must be finite and positive")
        if self._grouped:
            change = predicted_change(self._spec, point, values, ends, scale, self._arrays)
            bins = (change[..., None] >= self._edges).sum(axis=-1)  # (N, H, K)
            offset = self._table[which][:, self._h, self._k, bins]
        else:
            offset = self._offsets[which]
        return point + offset * scale if self._normalised else point + offset
