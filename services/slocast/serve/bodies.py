"""The request bodies of /v1/forecast and /v1/forecast/batch as msgspec Structs.

msgspec decodes a body straight into these in C, refusing unknown or missing keys,
wrong types, ``null``, NaN/Infinity literals and numbers beyond a double, each
with the JSON path of the offending value. A row's columns are
:data:`slocast.core.schema.FEATURE_COLUMNS`: the wire format follows the schema.
"""

from __future__ import annotations

import msgspec

from slocast.core.schema import FEATURE_COLUMNS, TIME_COLUMN

# gc=False: bodies hold no reference cycles, and the collector then never scans them.
Row = msgspec.defstruct(
    "Row",
    [(TIME_COLUMN, str), *((column, float) for column in FEATURE_COLUMNS)],
    forbid_unknown_fields=True,
    gc=False,
    module=__name__,
)


class ForecastBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    history: list[Row]  # type: ignore[valid-type]
    horizon: int = 1
    quantiles: list[float] | None = None


class SeriesBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    id: str | int
    history: list[Row]  # type: ignore[valid-type]


class BatchBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    series: list[SeriesBody]
    horizon: int = 1
    quantiles: list[float] | None = None


FORECAST = msgspec.json.Decoder(ForecastBody)
BATCH = msgspec.json.Decoder(BatchBody)
