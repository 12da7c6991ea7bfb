"""SLOCAST_TREE_ENGINE picks the tree engine; anything else is refused at start-up."""

from __future__ import annotations

import pytest

from slocast.core.errors import ConfigError
from slocast.settings import ServeSettings


def test_default_is_compiled_and_xgboost_is_accepted(tmp_path) -> None:
    home = {"SLOCAST_HOME": str(tmp_path)}
    assert ServeSettings.from_env(home).tree_engine == "compiled"
    chosen = ServeSettings.from_env({**home, "SLOCAST_TREE_ENGINE": "xgboost"})
    assert chosen.tree_engine == "xgboost"


def test_unknown_engine_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="SLOCAST_TREE_ENGINE"):
        ServeSettings.from_env({"SLOCAST_HOME": str(tmp_path), "SLOCAST_TREE_ENGINE": "tl2cgen"})
