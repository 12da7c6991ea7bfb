"""The native LTE kernels (``slocast._native._core``, source ``_native/lte.c``) bound to
one model: window features of a :class:`FeatureSpec`, compiled trees, and the
calibrated upper bounds of :class:`slocast.serve.bounds.Bounds`.

Both are arrays in, arrays out; the C side validates every argument (shapes,
dtypes, layout bounds) and raises ``ValueError``/``TypeError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slocast._native import _core
from slocast.core.features import FEATURE_BLOCKS, N_CALENDAR, Block, FeatureSpec, kernel_layout
from slocast.serve.bounds import Bounds


class NativeFeatures:
    """:func:`slocast.core.features.window_features` of one spec, computed by the kernel."""

    def __init__(self, spec: FeatureSpec, blocks: tuple[Block, ...] = FEATURE_BLOCKS) -> None:
        self.layout = kernel_layout(spec, blocks)
        self.width = self.layout.width

    def __call__(self, times: np.ndarray, values: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """The feature matrix (N, F), float32, for datetime64[ns] ``times``, float64
        ``values`` (rows, C) and int64 window ``ends``."""
        layout = self.layout
        ends = np.ascontiguousarray(ends, np.int64)
        out = np.empty((ends.size, layout.width), np.float32)
        phases = np.empty((ends.size, 3), np.float64)
        _core.lte_features(
            np.ascontiguousarray(values, np.float64),
            ends,
            np.ascontiguousarray(times).view(np.int64),
            layout.caps,
            layout.blocks,
            layout.columns,
            layout.params,
            layout.window,
            layout.step_ns,
            out,
            phases,
        )
        if layout.calendar >= 0:  # NumPy's own sin/cos, as the reference
            calendar = out[:, layout.calendar : layout.calendar + N_CALENDAR]
            calendar[:, 0::2] = np.sin(phases)
            calendar[:, 1::2] = np.cos(phases)
        return out


class CompiledTrees:
    """TL2cgen-generated libraries evaluated on a feature matrix in one native call."""

    def __init__(self, libraries: list[Path]) -> None:
        # OSError (cannot load) or ValueError (not a single-output float32 model).
        self._trees = tuple(_core.load_trees(str(path)) for path in libraries)

    def __len__(self) -> int:
        return len(self._trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Raw outputs (rows, libraries), float32, of a float32 matrix (rows, F)."""
        out = np.empty((x.shape[0], len(self._trees)), np.float32)
        _core.predict_trees(self._trees, np.ascontiguousarray(x, np.float32), out)
        return out


_KEPT_LEVEL_SETS = 64


class ScaleError(ValueError):
    """A window's conformal scale is not finite and positive (only absurd inputs)."""

    def __init__(self, window: int) -> None:
        super().__init__(f"conformal scale of window {window} must be finite and positive")
        self.window = window


class NativeBounds:
    """:meth:`Bounds.upper` of one bundle (the reference), computed by the kernel."""

    def __init__(self, bounds: Bounds) -> None:
        self.levels = bounds.levels
        a = bounds.kernel_arguments()
        self._tables = (a["targets"], a["caps"], a["floor"], a["edges"], a["table"])
        self._window, self._normalised = a["window"], a["normalised"]
        self._floor_forecast = bounds.floor_forecast
        self._shape = a["table"].shape[1:3]
        self._which: dict[tuple[float, ...], np.ndarray] = {}

    def which(self, levels: tuple[float, ...]) -> np.ndarray:
        """The kernel's ``which`` argument for calibrated ``levels`` (kept for the first
        few distinct requests: clients mostly ask for the same levels)."""
        which = self._which.get(levels)
        if which is None:
            which = np.array([self.levels.index(q) for q in levels], np.int64)
            which.flags.writeable = False  # shared by concurrent requests
            if len(self._which) < _KEPT_LEVEL_SETS:
                self._which[levels] = which
        return which

    def upper(
        self, point: np.ndarray, values: np.ndarray, ends: np.ndarray, which: np.ndarray
    ) -> np.ndarray:
        """Bounds ``(len(which), N, horizon, K)``, float64; :class:`ScaleError` naming the
        first window whose scale is not finite and positive."""
        out = np.empty((which.size, point.shape[0], *self._shape))
        bad = _core.lte_bounds(
            np.ascontiguousarray(point, np.float64),
            np.ascontiguousarray(values, np.float64),
            ends,
            *self._tables,
            which,
            self._window,
            self._normalised,
            out,
        )
        if bad >= 0:
            raise ScaleError(bad)
        return self._floor_forecast(out)
