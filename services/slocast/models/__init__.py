"""Model families. Each is a :class:`~slocast.models.base.Forecaster`.

Families are imported lazily by name so that serving a tree model never imports
PyTorch or Prophet.
"""

from __future__ import annotations

import importlib

from slocast.models.base import Forecaster

# family name -> "module:Class"
FAMILIES: dict[str, str] = {
    "persistence": "slocast.models.baselines:Persistence",
    "seasonal_naive": "slocast.models.baselines:SeasonalNaive",
    "xgboost": "slocast.models.xgboost_forecaster:XGBoostForecaster",
    "gru": "slocast.models.recurrent:GRUForecaster",
    "lstm": "slocast.models.recurrent:LSTMForecaster",
    "prophet": "slocast.models.prophet_forecaster:ProphetForecaster",
    "ensemble": "slocast.models.ensemble:EnsembleForecaster",
    "blend": "slocast.models.ensemble:BlendForecaster",
}
BASELINES: tuple[str, ...] = ("persistence", "seasonal_naive")
CANDIDATES: tuple[str, ...] = ("xgboost", "gru", "lstm", "prophet", "ensemble", "blend")


def family_class(name: str) -> type[Forecaster]:
    try:
        target = FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
