"""Split-conformal calibration: the one place where upper bounds are computed.

An upper bound for quantile q is ``point + offset_q`` where ``offset_q`` is the
``ceil(q * (n + 1))``-th smallest *signed* residual ``y - point`` on ``n``
calibration rows the model was not trained on. Signed residuals give one-sided
coverage q; absolute residuals would over-cover (about 0.95 for q = 0.9 under
symmetric noise) and widen every bound. When ``ceil(q(n+1)) > n`` the finite-sample
guarantee needs an infinite offset; we use the largest residual instead and say so
through :func:`rank_for`, so callers can warn about too-small calibration sets.

Variants live here too: Mondrian (per-group offsets, for input-dependent noise),
normalised residuals (residual / scale), and adaptive conformal inference (online
update of the miscoverage level under drift).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)


def rank_for(q: float, n: int) -> int:
    """1-based rank of the order statistic used for level ``q`` with ``n`` residuals."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if n < 1:
        raise ValueError("conformal calibration needs at least one residual")
    return min(math.ceil(q * (n + 1)), n)


def conformal_offset(residuals: np.ndarray, q: float) -> np.ndarray:
    """Offset(s) for level ``q`` from signed residuals ``y - point``.

    ``residuals`` has calibration rows on axis 0; any trailing axes (horizon step,
    target) are calibrated independently. NaN residuals (missing truth) are ignored
    per column.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim == 1:
        return np.asarray(_column_offset(r, q))
    flat = r.reshape(r.shape[0], -1)
    out = np.array([_column_offset(flat[:, j], q) for j in range(flat.shape[1])])
    return out.reshape(r.shape[1:])


def _column_offset(column: np.ndarray, q: float) -> float:
    values = np.sort(column[~np.isnan(column)])
    if values.size == 0:
        raise ValueError("conformal calibration got no finite residuals")
    return float(values[rank_for(q, values.size) - 1])


@dataclass(frozen=True)
class Calibration:
    """Offsets per quantile level for one model version (never reuse across versions).

    ``offsets[q]`` has the shape of one prediction (e.g. ``(horizon, targets)``).
    When ``normalised`` is true the offsets are in units of a per-row ``scale``
    (e.g. the recent load level): ``upper = point + offset * scale``. The bound
    then widens where the noise is larger, so coverage holds across regimes
    instead of only on average.

    Optionally Mondrian: every forecast cell also carries a group variable (e.g.
    the forecast's predicted change), cut into quantile bins on the calibration
    rows (``edges``, shape ``(bins - 1, *offset_shape)``), each bin with its own
    offsets (``group_offsets[q]``, shape ``(bins, *offset_shape)``). Coverage
    then holds within every bin, so it survives a change in the mix of regimes
    between calibration and serving. A bin with fewer than ``min_group_size``
    residuals uses the pooled offset.
    """

    offsets: dict[float, np.ndarray]
    n_calibration: int
    normalised: bool = False
    edges: np.ndarray | None = None
    group_offsets: dict[float, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        scale: np.ndarray | None = None,
        group_by: np.ndarray | None = None,
        bins: int = 1,
        min_group_size: int = 100,
    ) -> Calibration:
        residuals = np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)
        if scale is not None:
            residuals = residuals / _positive(scale)
        pooled = {float(q): conformal_offset(residuals, q) for q in quantiles}
        edges, group_offsets = None, {}
        if group_by is not None and bins > 1:
            edges, group_offsets = _group_offsets(
                residuals, np.asarray(group_by, np.float64), pooled, bins, min_group_size
            )
        return cls(
            offsets=pooled,
            n_calibration=int(residuals.shape[0]),
            normalised=scale is not None,
            edges=edges,
            group_offsets=group_offsets,
        )

    @property
    def levels(self) -> list[float]:
        return sorted(self.offsets)

    @property
    def grouped(self) -> bool:
        return self.edges is not None

    def upper(
        self,
        point: np.ndarray,
        q: float,
        scale: np.ndarray | None = None,
        group_by: np.ndarray | None = None,
    ) -> np.ndarray:
        """Upper bound at level ``q`` for point forecasts shaped ``(N, *offset_shape)``."""
        try:
            offset = self.offsets[float(q)]
        except KeyError:
            raise KeyError(f"quantile {q} is not calibrated; available: {self.levels}") from None
        if self.edges is not None:
            if group_by is None:
                raise ValueError("this calibration is per group: pass the rows' group variable")
            offset = self._grouped_offset(float(q), np.asarray(group_by, np.float64))
        if self.normalised:
            if scale is None:
                raise ValueError("this calibration is normalised: pass the rows' scale")
            return np.asarray(point) + offset * _positive(scale)
        return np.asarray(point) + offset

    def _grouped_offset(self, q: float, group_by: np.ndarray) -> np.ndarray:
        # Bin of every cell: how many of its edges lie at or below the value.
        bins = (group_by[..., None] >= np.moveaxis(self.edges, 0, -1)).sum(axis=-1)
        table = np.moveaxis(self.group_offsets[q], 0, -1)  # (*offset_shape, bins)
        return np.take_along_axis(
            np.broadcast_to(table, (*bins.shape, table.shape[-1])), bins[..., None], axis=-1
        )[..., 0]

    def to_dict(self) -> dict:
        out = {
            "n_calibration": self.n_calibration,
            "normalised": self.normalised,
            "offsets": {str(q): np.asarray(v).tolist() for q, v in self.offsets.items()},
        }
        if self.edges is not None:
            out["edges"] = self.edges.tolist()
            out["group_offsets"] = {str(q): v.tolist() for q, v in self.group_offsets.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        edges = data.get("edges")
        return cls(
            offsets={float(q): np.asarray(v, np.float64) for q, v in data["offsets"].items()},
            n_calibration=int(data["n_calibration"]),
            normalised=bool(data.get("normalised", False)),
            edges=None if edges is None else np.asarray(edges, np.float64),
            group_offsets={
                float(q): np.asarray(v, np.float64)
                for q, v in data.get("group_offsets", {}).items()
            },
        )


def _group_offsets(
    residuals: np.ndarray,
    group_by: np.ndarray,
    pooled: dict[float, np.ndarray],
    bins: int,
    min_group_size: int,
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Quantile-bin edges of ``group_by`` per cell and the offsets of every bin."""
    n = residuals.shape[0]
    r = residuals.reshape(n, -1)
    g = np.broadcast_to(group_by, residuals.shape).reshape(n, -1)
    cells = r.shape[1]
    edges = np.empty((bins - 1, cells))
    table = {q: np.empty((bins, cells)) for q in pooled}
    for j in range(cells):
        usable = ~np.isnan(r[:, j]) & np.isfinite(g[:, j])
        edges[:, j] = np.quantile(g[usable, j], np.arange(1, bins) / bins)
        which = (g[:, j][:, None] >= edges[None, :, j]).sum(axis=1)
        for b in range(bins):
            members = r[usable & (which == b), j]
            for q in pooled:
                table[q][b, j] = (
                    _column_offset(members, q)
                    if members.size >= min_group_size
                    else pooled[q].reshape(-1)[j]
                )
    shape = residuals.shape[1:]
    return edges.reshape(bins - 1, *shape), {q: v.reshape(bins, *shape) for q, v in table.items()}


def _positive(scale: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, np.float64)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("conformal scale must be finite and positive")
    return s


@dataclass(frozen=True)
class MondrianCalibration:
    """Per-group offsets on residuals normalised by a positive scale.

    Coverage then holds within every group (e.g. a load regime), not only on
    average. Groups with fewer than ``min_group_size`` residuals fall back to the
    pooled offset, so a rare regime never gets an offset from a handful of points.
    """

    q: float
    pooled: float
    per_group: dict[int, float] = field(default_factory=dict)
    # The residuals' scale when it is one constant for every row (offsets additive
    # in the point's units, times this); None: a scale per row, passed by the caller.
    fixed_scale: float | None = None

    @classmethod
    def fit(
        cls,
        residuals: np.ndarray,
        groups: np.ndarray,
        q: float,
        scale: np.ndarray | None = None,
        min_group_size: int = 50,
    ) -> MondrianCalibration:
        r = np.asarray(residuals, np.float64)
        if scale is not None:
            r = r / np.asarray(scale, np.float64)
        g = np.asarray(groups)
        per_group = {}
        for key in np.unique(g):
            mask = g == key
            if mask.sum() >= min_group_size:
                per_group[int(key)] = _column_offset(r[mask], q)
        return cls(q=q, pooled=_column_offset(r, q), per_group=per_group)

    def offsets_for(self, groups: np.ndarray) -> np.ndarray:
        g = np.asarray(groups)
        out = np.full(g.shape, self.pooled, dtype=np.float64)
        for key, value in self.per_group.items():
            out[g == key] = value
        return out

    def upper(
        self, point: np.ndarray, groups: np.ndarray, scale: np.ndarray | None = None
    ) -> np.ndarray:
        offset = self.offsets_for(groups)
        if scale is not None:
            offset = offset * np.asarray(scale, np.float64)
        return np.asarray(point, np.float64) + offset

    def to_dict(self) -> dict:
        out = {
            "q": self.q,
            "pooled": self.pooled,
            "per_group": {str(k): v for k, v in self.per_group.items()},
        }
        if self.fixed_scale is not None:
            out["fixed_scale"] = self.fixed_scale
        return out

    @classmethod
    def from_dict(cls, data: dict) -> MondrianCalibration:
        fixed = data.get("fixed_scale")
        return cls(
            q=float(data["q"]),
            pooled=float(data["pooled"]),
            per_group={int(k): float(v) for k, v in data["per_group"].items()},
            fixed_scale=None if fixed is None else float(_positive(np.asarray(fixed))),
        )


class AdaptiveConformal:
    """Adaptive conformal inference (Gibbs & Candes, 2021) for streams under drift.

    Keeps a running miscoverage level ``alpha_t``: each observed miss lowers it
    (wider bounds), each hit raises it slightly, so long-run coverage tracks the
    target even when the residual distribution shifts. The offset used at time t
    is the ``1 - alpha_t`` order statistic of a bounded window of recent residuals.

    The window is kept sorted beside its arrival order, so each step reads its order
    statistic by index instead of sorting the window: an update costs O(window) in
    memory moves per residual, not a sort, and bulk posts of thousands of samples
    stay cheap next to parsing them.
    """

    def __init__(self, q: float, gamma: float = 0.005, window: int = 2000) -> None:
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile level must be in (0, 1), got {q}")
        if window < 1:
            raise ValueError(f"window must hold at least one residual, got {window}")
        self.target_alpha = 1.0 - q
        self.alpha = self.target_alpha
        self.gamma = gamma
        self.window = window
        self._arrivals: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        """Residuals in the window."""
        return len(self._sorted)

    def seed(self, residuals: np.ndarray) -> None:
        finite = np.asarray(residuals, np.float64).ravel()
        finite = finite[np.isfinite(finite)][-self.window :]
        self._arrivals = deque(float(x) for x in finite)
        self._sorted = sorted(self._arrivals)

    @property
    def offset(self) -> float:
        n = len(self._sorted)
        if n == 0:
            return 0.0
        level = min(max(1.0 - self.alpha, 1e-6), 1.0 - 1e-6)
        return self._sorted[rank_for(level, n) - 1]

    def update(self, residuals: np.ndarray) -> None:
        """Feed signed residuals ``y - point`` observed after predicting with ``offset``.

        Non-finite residuals carry no information about coverage and are skipped.
        """
        values = np.asarray(residuals, np.float64).ravel()
        for r in values[np.isfinite(values)].tolist():
            missed = float(r > self.offset)
            self.alpha += self.gamma * (self.target_alpha - missed)
            self._arrivals.append(r)
            bisect.insort(self._sorted, r)
            if len(self._arrivals) > self.window:
                oldest = self._arrivals.popleft()
                del self._sorted[bisect.bisect_left(self._sorted, oldest)]
