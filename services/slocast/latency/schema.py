"""Request and sample schema of the latency API, validated column-wise.

The HTTP edge receives lists of up to 10,000 objects. Validating them one pydantic
model at a time costs milliseconds per request, so bodies are parsed with orjson and
checked here per column with NumPy; the pydantic models at the bottom describe the
same schema for the OpenAPI document and for single-object endpoints.

Rules (latency-api.md): required fields must be present; numbers must be JSON
numbers (strings are rejected, booleans count as 0/1 as in pydantic's lax mode);
integer fields must hold whole numbers; every number must lie in its field's range
(:data:`UPPER_BOUNDS`, all from 0); unknown fields are ignored. Any violation rejects
the whole request with FastAPI's 422 format.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Literal, Protocol

import numpy as np
import orjson
from pydantic import BaseModel, Field

MAX_ITEMS = 10_000

# name -> (kind, upper bound or None). Required fields first, then defaults.
FRACTION_FIELDS = ("kv_cache_percentage", "prefix_cache_score")
COUNT_FIELDS = (
    "input_token_length",
    "num_request_waiting",
    "num_request_running",
    "num_tokens_generated",
)
OPTIONAL_COUNT_FIELDS = (
    "prefill_tokens_in_flight",
    "decode_tokens_in_flight",
    "encoder_matched_size",
    "encoder_input_size",
)
TARGET_FIELDS = ("actual_ttft_ms", "actual_tpot_ms")
POD_TYPES = {"": 0, "prefill": 1, "decode": 2}

# Largest accepted value of every numeric field (the smallest is 0). Far above any
# real pod, and small enough that every derived feature stays finite in float32: an
# unbounded 1e308 passed validation and then made every retrain fail ("Input data
# contains inf") until a flush. docs/latency.md lists them.
MAX_REQUESTS = 1e6  # waiting / running requests on one pod
MAX_TOKENS = 1e7  # tokens of one request (prompt, generated, encoder input)
MAX_TOKENS_IN_FLIGHT = 1e9  # tokens of all requests a pod is working on
MAX_LATENCY_MS = 1e7  # an observed TTFT or TPOT (~2.8 hours)
UPPER_BOUNDS: dict[str, float] = {
    "kv_cache_percentage": 1.0,
    "prefix_cache_score": 1.0,
    "input_token_length": MAX_TOKENS,
    "num_request_waiting": MAX_REQUESTS,
    "num_request_running": MAX_REQUESTS,
    "num_tokens_generated": MAX_TOKENS,
    "prefill_tokens_in_flight": MAX_TOKENS_IN_FLIGHT,
    "decode_tokens_in_flight": MAX_TOKENS_IN_FLIGHT,
    "encoder_matched_size": MAX_TOKENS,
    "encoder_input_size": MAX_TOKENS,
    "actual_ttft_ms": MAX_LATENCY_MS,
    "actual_tpot_ms": MAX_LATENCY_MS,
}

Columns = dict[str, np.ndarray]


class ValidationFailure(Exception):
    """Invalid user input; ``errors`` is FastAPI's ``detail`` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid input")
        self.errors = errors


def _error(kind: str, loc: tuple, msg: str, value: Any = None) -> ValidationFailure:
    detail = {"type": kind, "loc": ["body", *loc], "msg": msg}
    if value is not None:
        detail["input"] = value
    return ValidationFailure([detail])


def decode_json(body: bytes, *, allow_empty: bool = False) -> Any:
    """Decode a request body with orjson; malformed JSON is a 422 like FastAPI's."""
    if not body.strip():
        if allow_empty:
            return None
        raise _error("missing", (), "Field required")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailure(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body", exc.pos],
                    "msg": f"JSON decode error: {exc.msg}",
                }
            ]
        ) from None


class ColumnParser(Protocol):
    """Parses a raw body straight into columns, or returns None when unsure
    (:class:`slocast.latency.native.Parser`)."""

    def parse(self, body: bytes, key: str | None, max_rows: int) -> Columns | None: ...


def feature_columns(body: bytes, key: str | None, parser: ColumnParser | None = None) -> Columns:
    """Validated feature columns of a request body: ``{key: [features, ...]}``, or
    one features object when ``key`` is None.

    ``parser`` (the native kernel) answers plainly valid bodies without building
    Python objects; whatever it does not accept goes through orjson and
    :func:`parse_features`, which decide and name the error (same columns either
    way, tested differentially).
    """
    if parser is not None:
        cols = parser.parse(body, key, MAX_ITEMS)
        if cols is not None:
            return cols
    data = decode_json(body)
    if key is None:
        if not isinstance(data, dict):
            raise _error("dict_type", (), "Input should be a valid dictionary")
        return parse_features([data])
    return parse_features(item_list(data, key), (key,))


def item_list(body: Any, key: str) -> list:
    """The list under ``key`` of a decoded JSON body, with its size checked."""
    if not isinstance(body, dict):
        raise _error("dict_type", (), "Input should be a valid dictionary")
    if key not in body:
        raise _error("missing", (key,), "Field required")
    items = body[key]
    if not isinstance(items, list):
        raise _error("list_type", (key,), "Input should be a valid list")
    if not 1 <= len(items) <= MAX_ITEMS:
        raise _error(
            "too_short" if not items else "too_long",
            (key,),
            f"List should have between 1 and {MAX_ITEMS} items, not {len(items)}",
        )
    return items


REQUIRED_NUMERIC = FRACTION_FIELDS + COUNT_FIELDS
_get_required = itemgetter(*REQUIRED_NUMERIC)
_REQUIRED_UPPER = np.array([UPPER_BOUNDS[name] for name in REQUIRED_NUMERIC])
_OPTIONAL_UPPER = np.array([UPPER_BOUNDS[name] for name in OPTIONAL_COUNT_FIELDS])


def _get_optional(item: dict) -> tuple:
    return (
        item.get("prefill_tokens_in_flight", 0),
        item.get("decode_tokens_in_flight", 0),
        item.get("encoder_matched_size", 0),
        item.get("encoder_input_size", 0),
    )


def parse_features(items: list, loc: tuple = ()) -> Columns:
    """Validate a list of feature objects into columns (numbers as float64).

    Fast path: all numeric fields of all items into two 2-D arrays in C loops
    (``itemgetter`` + one ``np.array``), checked with a few vectorised comparisons.
    Anything unusual (a missing key, a string, a bad value) falls through to the
    column-by-column validator, which finds and names the first error; the fast path
    never decides that input is invalid, it only accepts input that is clean.
    """
    try:
        required = np.array(list(map(_get_required, items)))
        optional = np.array(list(map(_get_optional, items)))
        pods = [POD_TYPES[item.get("pod_type", "")] for item in items]
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
        return _parse_features_slow(items, loc)
    if (
        required.dtype.kind not in "biuf"
        or optional.dtype.kind not in "biuf"
        or required.shape != (len(items), len(REQUIRED_NUMERIC))
    ):
        return _parse_features_slow(items, loc)
    required = required.astype(np.float64)
    optional = optional.astype(np.float64)
    counts = np.concatenate([required[:, len(FRACTION_FIELDS) :], optional], axis=1)
    if (
        not ((required >= 0) & (required <= _REQUIRED_UPPER)).all()
        or not ((optional >= 0) & (optional <= _OPTIONAL_UPPER)).all()
        or (counts != np.floor(counts)).any()
    ):
        return _parse_features_slow(items, loc)
    columns = np.ascontiguousarray(np.concatenate([required, optional], axis=1).T)
    cols: Columns = dict(zip(REQUIRED_NUMERIC + OPTIONAL_COUNT_FIELDS, columns, strict=True))
    cols["pod_type"] = np.asarray(pods, dtype=np.float64)
    return cols


def _parse_features_slow(items: list, loc: tuple) -> Columns:
    cols: Columns = {}
    for name in FRACTION_FIELDS:
        cols[name] = _numeric(items, name, loc, required=True, integer=False)
    for name in COUNT_FIELDS:
        cols[name] = _numeric(items, name, loc, required=True, integer=True)
    for name in OPTIONAL_COUNT_FIELDS:
        cols[name] = _numeric(items, name, loc, required=False, integer=True)
    cols["pod_type"] = _pod_types(items, loc)
    return cols


def parse_samples(items: list, loc: tuple = ()) -> Columns:
    """Validate training samples: the features plus both observed targets."""
    cols = parse_features(items, loc)
    for name in TARGET_FIELDS:
        cols[name] = _numeric(items, name, loc, required=True, integer=False)
    return cols


SAMPLE_FIELDS = REQUIRED_NUMERIC + OPTIONAL_COUNT_FIELDS + TARGET_FIELDS
_INTEGER_FIELDS = frozenset(COUNT_FIELDS + OPTIONAL_COUNT_FIELDS)


def valid_sample_rows(cols: Columns) -> np.ndarray:
    """Which rows of sample columns that did not come through :func:`parse_samples`
    (e.g. a Kafka message from another producer) obey the schema: every number
    finite, whole where it must be and within its range, a known pod type.

    Raises ``ValueError`` when the columns are not a batch at all (a field missing,
    columns of different lengths or shapes)."""
    try:
        n = np.shape(cols["kv_cache_percentage"])[0]
        keep = np.ones(n, dtype=bool)
        for name in (*SAMPLE_FIELDS, "pod_type"):
            if np.shape(cols[name]) != (n,):
                raise ValueError(f"column {name} has shape {np.shape(cols[name])}, not ({n},)")
        for name in SAMPLE_FIELDS:
            values = np.asarray(cols[name], dtype=np.float64)
            keep &= (values >= 0) & (values <= UPPER_BOUNDS[name])  # False for NaN
            if name in _INTEGER_FIELDS:
                keep &= values == np.floor(values)
        keep &= np.isin(np.asarray(cols["pod_type"], dtype=np.float64), list(POD_TYPES.values()))
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"not a sample batch: {exc!r}") from None
    return keep


def bound_text(value: float) -> str:
    """A bound as people write it: 1, 1000000, 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _numeric(items: list, name: str, loc: tuple, *, required: bool, integer: bool) -> np.ndarray:
    try:
        raw = [item[name] for item in items] if required else [item.get(name, 0) for item in items]
    except (KeyError, TypeError, AttributeError):
        raise _first_structural_error(items, name, loc, required) from None
    try:
        values = np.array(raw)
    except (ValueError, OverflowError):
        values = np.array(raw, dtype=object)
    if values.dtype.kind not in "biuf" or values.ndim != 1:
        index = next(i for i, v in enumerate(raw) if not _is_number(v))
        kind = "int_type" if integer else "float_type"
        what = "an integer" if integer else "a number"
        raise _error(kind, (*loc, index, name), f"Input should be {what}", raw[index])
    values = values.astype(np.float64)
    if integer:
        bad = values != np.floor(values)
        if bad.any():
            index = int(np.argmax(bad))
            raise _error(
                "int_from_float",
                (*loc, index, name),
                "Input should be a valid integer, got a number with a fractional part",
                raw[index],
            )
    upper = UPPER_BOUNDS[name]
    bad = ~((values >= 0) & (values <= upper))  # NaN is out of range too
    if bad.any():
        index = int(np.argmax(bad))
        raise _error(
            "greater_than_equal" if values[index] < 0 else "less_than_equal",
            (*loc, index, name),
            f"Input should be between 0 and {bound_text(upper)} ({name})",
            raw[index],
        )
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not (
        isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63
    )


def _first_structural_error(
    items: list, name: str, loc: tuple, required: bool
) -> ValidationFailure:
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            return _error("dict_type", (*loc, index), "Input should be a valid dictionary")
        if required and name not in item:
            return _error("missing", (*loc, index, name), "Field required")
    return _error("value_error", (*loc,), f"invalid field {name}")


def _pod_types(items: list, loc: tuple) -> np.ndarray:
    try:
        codes = [POD_TYPES.get(item.get("pod_type", "")) for item in items]
    except TypeError:  # an unhashable value such as a list
        codes = [
            None
            if not isinstance(it.get("pod_type", ""), str)
            else POD_TYPES.get(it.get("pod_type", ""))
            for it in items
        ]
    if None in codes:
        index = codes.index(None)
        raise _error(
            "literal_error",
            (*loc, index, "pod_type"),
            "Input should be '', 'prefill' or 'decode'",
            items[index].get("pod_type"),
        )
    return np.asarray(codes, dtype=np.float64)


# --- pydantic models: the same schema for the OpenAPI document --------------------


def _int_le(name: str) -> int:
    return int(UPPER_BOUNDS[name])


class PredictionRequest(BaseModel):
    kv_cache_percentage: float = Field(..., ge=0.0, le=UPPER_BOUNDS["kv_cache_percentage"])
    input_token_length: int = Field(..., ge=0, le=_int_le("input_token_length"))
    num_request_waiting: int = Field(..., ge=0, le=_int_le("num_request_waiting"))
    num_request_running: int = Field(..., ge=0, le=_int_le("num_request_running"))
    num_tokens_generated: int = Field(..., ge=0, le=_int_le("num_tokens_generated"))
    prefix_cache_score: float = Field(..., ge=0.0, le=UPPER_BOUNDS["prefix_cache_score"])
    pod_type: Literal["", "prefill", "decode"] = ""
    prefill_tokens_in_flight: int = Field(0, ge=0, le=_int_le("prefill_tokens_in_flight"))
    decode_tokens_in_flight: int = Field(0, ge=0, le=_int_le("decode_tokens_in_flight"))
    encoder_matched_size: int = Field(0, ge=0, le=_int_le("encoder_matched_size"))
    encoder_input_size: int = Field(0, ge=0, le=_int_le("encoder_input_size"))


class TrainingEntry(PredictionRequest):
    actual_ttft_ms: float = Field(..., ge=0.0, le=UPPER_BOUNDS["actual_ttft_ms"])
    actual_tpot_ms: float = Field(..., ge=0.0, le=UPPER_BOUNDS["actual_tpot_ms"])
    timestamp: float | str | None = None


class BulkTrainingRequest(BaseModel):
    entries: list[TrainingEntry] = Field(..., min_length=1, max_length=MAX_ITEMS)


class BulkPredictionRequest(BaseModel):
    requests: list[PredictionRequest] = Field(..., min_length=1, max_length=MAX_ITEMS)


class FlushBody(BaseModel):
    flush_training_data: bool = True
    flush_test_data: bool = True
    flush_metrics: bool = True
    reason: str | None = None


class ErrorItem(BaseModel):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationErrorBody(BaseModel):
    """422: FastAPI's format; ``loc`` names the item and the field."""

    detail: list[ErrorItem]


class ErrorBody(BaseModel):
    detail: str


class TooLargeBody(BaseModel):
    """413: the body is larger than ``SLOCAST_LATENCY_MAX_BODY_BYTES``."""

    detail: str
    max_body_bytes: int


# Models a handler parses itself (openapi_body) and that therefore must be added to
# the OpenAPI components by hand (http_common.document_bodies).
BODY_MODELS: tuple[type[BaseModel], ...] = (
    PredictionRequest,
    BulkPredictionRequest,
    BulkTrainingRequest,
    FlushBody,
)


def openapi_body(model: type[BaseModel], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the handler parses itself: a
    reference to the model in the document's components (see ``BODY_MODELS``)."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": ref}}}}
