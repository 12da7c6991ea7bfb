"""The seasonal-naive baseline looks back one day whatever the dataset's step."""

from __future__ import annotations

import numpy as np
import pytest

from slocast.core.config import PipelineConfig
from slocast.core.schema import TARGET_INDEX
from slocast.core.synthetic import generate_lte
from slocast.models.baselines import SeasonalNaive
from slocast.preprocess.stage import preprocess


@pytest.mark.parametrize(("step_seconds", "day_rows"), [(120, 720), (900, 96), (3600, 24)])
def test_the_default_season_is_one_day_of_the_datasets_step(step_seconds, day_rows):
    data = preprocess(generate_lte(2000, seed=1, step_seconds=step_seconds), None, PipelineConfig())
    model = SeasonalNaive(data.spec)
    assert model.season_steps == day_rows  # before fit too: serving sizes histories by it
    assert model.fit(data, seed=0).params == {"season_steps": day_rows}
    ends = data.ends("test")
    forecast = model.predict(data.times, data.values, ends)[:, 0, :]
    expected = data.values[ends - day_rows][:, list(TARGET_INDEX)]
    day = np.timedelta64(86_400, "s")
    assert np.all(data.times[ends] - data.times[ends - day_rows] == day)
    np.testing.assert_array_equal(forecast, expected)


def test_an_explicit_season_is_kept():
    data = preprocess(generate_lte(2000, seed=1), None, PipelineConfig(season_steps=30))
    model = SeasonalNaive(data.spec)
    assert model.fit(data, seed=0).params == {"season_steps": 30}
