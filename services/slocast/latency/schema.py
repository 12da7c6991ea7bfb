"""Request and sample schema of the latency API: msgspec Structs, decoded in C.

Bodies go straight from bytes to typed Structs (``msgspec.json.Decoder``), then to
NumPy columns for the one feature builder (:mod:`slocast.latency.features`). The
same Structs give the OpenAPI documents their JSON Schema
(:func:`slocast.latency.http_common.document_bodies`).

Rules (latency-api.md): required fields must be present; numbers must be JSON
numbers (strings and booleans are rejected); integer fields must hold whole numbers
(``100.0`` is accepted as 100); every number must lie in its field's range
(:data:`UPPER_BOUNDS`, all from 0); unknown fields are ignored; a list holds 1 to
:data:`MAX_ITEMS` items. Any violation rejects the whole request with FastAPI's 422
format, ``loc`` naming the item and the field (:func:`failure`).
"""

from __future__ import annotations

import json
import re
from itertools import chain
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

MAX_ITEMS = 10_000

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
# An observed latency is 0 ("not observed") or at least a microsecond: no server
# answers faster, and 2,000 samples of 1e-300 ms drove the point floor (the
# targets' 5th percentile) to 5e-324 and the served bounds to zero.
MIN_OBSERVED_LATENCY_MS = 1e-3
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

# Integer fields are decoded as floats (so ``100.0`` passes, as with pydantic) and
# checked whole in the column step; their JSON Schema says integer
# (:func:`json_schema_components`).
Fraction = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Requests = Annotated[float, msgspec.Meta(ge=0, le=MAX_REQUESTS)]
Tokens = Annotated[float, msgspec.Meta(ge=0, le=MAX_TOKENS)]
TokensInFlight = Annotated[float, msgspec.Meta(ge=0, le=MAX_TOKENS_IN_FLIGHT)]
LatencyMs = Annotated[float, msgspec.Meta(ge=0.0, le=MAX_LATENCY_MS)]


# gc=False: a bulk body makes up to 10,000 of these, and Structs of numbers and
# strings cannot form reference cycles, so the cyclic collector need not track them.
class PredictionRequest(msgspec.Struct, gc=False):
    """One candidate pod's state and the request's prompt (latency-api.md)."""

    kv_cache_percentage: Fraction
    input_token_length: Tokens
    num_request_waiting: Requests
    num_request_running: Requests
    num_tokens_generated: Tokens
    prefix_cache_score: Fraction
    # null is monolithic, as upstream's `str | None` field takes it (recorded traces hold it)
    pod_type: Literal["", "prefill", "decode"] | None = ""
    prefill_tokens_in_flight: TokensInFlight = 0
    decode_tokens_in_flight: TokensInFlight = 0
    encoder_matched_size: Tokens = 0
    encoder_input_size: Tokens = 0


class TrainingEntry(PredictionRequest, kw_only=True):
    """A prediction request with its observed latencies."""

    actual_ttft_ms: LatencyMs
    actual_tpot_ms: LatencyMs
    timestamp: float | str | None = None


class BulkPredictionRequest(msgspec.Struct, gc=False):
    requests: Annotated[list[PredictionRequest], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


class BulkTrainingRequest(msgspec.Struct, gc=False):
    entries: Annotated[list[TrainingEntry], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]


class FlushBody(msgspec.Struct):
    flush_training_data: bool = True
    flush_test_data: bool = True
    flush_metrics: bool = True
    reason: str | None = None


class ErrorItem(msgspec.Struct, omit_defaults=True):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None


class ValidationErrorBody(msgspec.Struct):
    """422: FastAPI's format; ``loc`` names the item and the field."""

    detail: list[ErrorItem]


class ErrorBody(msgspec.Struct):
    detail: str


class TooLargeBody(msgspec.Struct):
    """413: the body is larger than ``SLOCAST_LATENCY_MAX_BODY_BYTES``."""

    detail: str
    max_body_bytes: int


# Bodies the handlers decode themselves, and error bodies: put into the OpenAPI
# components by hand (http_common.document_bodies), FastAPI does not see them.
SCHEMA_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    PredictionRequest,
    BulkPredictionRequest,
    BulkTrainingRequest,
    FlushBody,
    ValidationErrorBody,
    ErrorBody,
    TooLargeBody,
)


def json_schema_components(structs: tuple[type[msgspec.Struct], ...]) -> dict[str, Any]:
    """JSON Schema of ``structs`` and the Structs they nest, keyed by name, with
    references into ``#/components/schemas`` (OpenAPI) and integer fields typed so."""
    _, components = msgspec.json.schema_components(
        structs, ref_template="#/components/schemas/{name}"
    )
    for component in components.values():
        for name, field in component.get("properties", {}).items():
            if name in _INTEGER_FIELDS:
                field["type"] = "integer"
    return components


class ValidationFailure(Exception):
    """Invalid user input; ``errors`` is FastAPI's ``detail`` list."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"] if errors else "invalid input")
        self.errors = errors


# The offending input is echoed as FastAPI does, but bounded: a 1 MB string in
# `pod_type` came back whole as a 1 MB error body.
MAX_ECHO_CHARS = 200
# A 422 looks for a repeated key only in an object up to this size (a request item
# is well under 1 KiB): the scan decodes the object whole, and junk beside the
# error must not make the error path cost a full decode of the body.
DUPLICATE_SCAN_BYTES = 64 * 1024


def _echo(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_ECHO_CHARS:
        return f"{value[:MAX_ECHO_CHARS]}... ({len(value)} characters)"
    if isinstance(value, list | dict):
        size = len(msgspec.json.encode(value))
        if size > MAX_ECHO_CHARS:
            kind = "list" if isinstance(value, list) else "object"
            return f"<{kind} of {len(value)} items, {size} bytes>"
    return value


def _error(kind: str, loc: list, msg: str, value: Any = None) -> ValidationFailure:
    detail = {"type": kind, "loc": ["body", *loc], "msg": msg}
    if value is not None:
        detail["input"] = _echo(value)
    return ValidationFailure([detail])


def bound_text(value: float) -> str:
    """A bound as people write it: 1, 1000000, 0.5."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- msgspec's errors in FastAPI's shape ------------------------------------------------

_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+)\]")
_EXPECTED = re.compile(r"Expected `(?P<want>[^`]+)`(?:, got `(?P<got>[^`]+)`)?(?P<rest>.*)")
_MISSING = re.compile(r"Object missing required field `(?P<field>[^`]+)`")
_INTEGER_FIELDS = frozenset(COUNT_FIELDS + OPTIONAL_COUNT_FIELDS)


class RawBody(bytes):
    """A request body whose offending value :func:`failure` finds without decoding
    the rest: only the objects and arrays on the error's path are split (into
    undecoded ``msgspec.Raw`` members), so reporting an error costs about what
    validating the body did, whatever junk the body carries beside the error."""


_RAW_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_RAW_ARRAY = msgspec.json.Decoder(list[msgspec.Raw])


def _split(raw: bytes) -> Any:
    """An array or object one level deep (members left undecoded); anything else whole."""
    head = raw.lstrip()[:1]
    if head == b"[":
        return _RAW_ARRAY.decode(raw)
    if head == b"{":
        return _RAW_OBJECT.decode(raw)
    return msgspec.json.decode(raw)


def _leaf(raw: bytes) -> Any:
    """The offending value: whole when small enough to echo, else split (its size is
    then reported, see :func:`_echo`)."""
    return msgspec.json.decode(raw) if len(raw) <= MAX_ECHO_CHARS else _split(raw)


def _raw_at(root: RawBody, steps: list) -> bytes:
    """The undecoded value at ``steps``, splitting only the containers on the path."""
    raw = bytes(root)
    for step in steps:
        raw = bytes(_split(raw)[step])
    return raw


def _lookup(root: Any, steps: list) -> Any:
    try:
        if isinstance(root, RawBody):
            return _leaf(_raw_at(root, steps))
        for step in steps:
            root = root[step]
    # 1e999: valid JSON, no float holds it; deep nesting: the error is found first
    except (KeyError, IndexError, TypeError, msgspec.DecodeError, RecursionError):
        return None
    return root


def _occurrences(root: Any, steps: list) -> int:
    """How many times the last step (a key) appears in its object in a
    :class:`RawBody`: JSON allows a key twice, msgspec validates every occurrence
    and the dict the echo is read from keeps the last, so an error about one
    occurrence would otherwise echo another's value. Objects over
    :data:`DUPLICATE_SCAN_BYTES` count as 1 (their scan decodes them whole)."""
    if not isinstance(root, RawBody):
        return 1
    try:
        raw = _raw_at(root, steps[:-1])
        if len(raw) > DUPLICATE_SCAN_BYTES:
            return 1
        pairs = json.loads(raw, object_pairs_hook=lambda members: members)
    except (KeyError, IndexError, TypeError, ValueError, RecursionError):
        return 1
    return sum(1 for key, _ in pairs if key == steps[-1]) if isinstance(pairs, list) else 1


def failure(exc: msgspec.ValidationError, loc: tuple, document: Any) -> ValidationFailure:
    """A msgspec validation error as FastAPI's 422 detail.

    ``loc``: where the validated value sits in the body; ``document``: that value as
    plain JSON data, or the body as a :class:`RawBody` (for the offending ``input``).
    """
    match = _AT.match(str(exc))
    message, path = match["msg"], match["path"] or ""
    steps = [name or int(index) for name, index in _STEP.findall(path)]
    where = [*loc, *steps]
    field = steps[-1] if steps and isinstance(steps[-1], str) else None
    value = _lookup(document, steps)
    if field is not None and (times := _occurrences(document, steps)) > 1:
        return _error("value_error", where, f"{field} appears {times} times: send it once")
    if missing := _MISSING.match(message):
        return _error("missing", [*where, missing["field"]], "Field required")
    if field == "pod_type":
        return _error("literal_error", where, "Input should be '', 'prefill' or 'decode'", value)
    expected = _EXPECTED.match(message)
    if expected is None:  # e.g. "Number out of range"
        return _error("value_error", where, message, value)
    want, got, rest = expected["want"], expected["got"], expected["rest"].strip()
    if field in UPPER_BOUNDS and rest[:2] in ("<=", ">="):
        # NaN fails both bounds: named by its value, as a negative number is
        below = isinstance(value, int | float) and value < 0
        kind = "greater_than_equal" if below else "less_than_equal"
        bound = bound_text(UPPER_BOUNDS[field])
        return _error(kind, where, f"Input should be between 0 and {bound} ({field})", value)
    if want == "array" and "length" in rest:
        size = len(value) if isinstance(value, list) else "?"
        kind = "too_short" if ">=" in rest else "too_long"
        return _error(kind, where, f"List should have between 1 and {MAX_ITEMS} items, not {size}")
    if got is not None:
        if field in _INTEGER_FIELDS:
            return _error("int_type", where, "Input should be an integer", value)
        kinds = {
            "float": ("float_type", "Input should be a number"),
            "object": ("dict_type", "Input should be a valid dictionary"),
            "array": ("list_type", "Input should be a valid list"),
            "bool": ("bool_type", "Input should be a valid boolean"),
            "str | null": ("string_type", "Input should be a valid string"),
        }
        if want in kinds:
            kind, msg = kinds[want]
            return _error(kind, where, msg, value)
    return _error("value_error", where, message, value)


def _decode_error(exc: msgspec.DecodeError) -> ValidationFailure:
    text = str(exc)
    position = re.search(r"\(byte (\d+)\)", text)
    loc = [int(position[1])] if position else []
    return ValidationFailure(
        [{"type": "json_invalid", "loc": ["body", *loc], "msg": f"JSON decode error: {text}"}]
    )


TOO_DEEP = "JSON decode error: arrays or objects nested too deeply"


def decode(body: bytes, decoder: msgspec.json.Decoder, *, allow_empty: bool = False) -> Any:
    """``body`` decoded by ``decoder``, or a :class:`ValidationFailure` (422)."""
    if not body.strip():
        if allow_empty:
            return None
        raise _error("missing", [], "Field required")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise failure(exc, (), RawBody(body)) from None
    except msgspec.DecodeError as exc:
        raise _decode_error(exc) from None
    except RecursionError:
        # msgspec recurses per nesting level, unknown fields it skips included.
        raise ValidationFailure(
            [{"type": "json_invalid", "loc": ["body"], "msg": TOO_DEEP}]
        ) from None


# --- Structs to columns --------------------------------------------------------------

REQUIRED_NUMERIC = FRACTION_FIELDS + COUNT_FIELDS
FEATURE_FIELDS = REQUIRED_NUMERIC + OPTIONAL_COUNT_FIELDS
SAMPLE_FIELDS = FEATURE_FIELDS + TARGET_FIELDS
_features_of = attrgetter(*FEATURE_FIELDS)
_samples_of = attrgetter(*SAMPLE_FIELDS)
_pod_of = attrgetter("pod_type")
_POD_CODES = {**POD_TYPES, None: POD_TYPES[""]}
_WHOLE = np.array([name in _INTEGER_FIELDS for name in SAMPLE_FIELDS])


def _columns(items: list, names: tuple[str, ...], getter: attrgetter, loc: tuple | None) -> Columns:
    """Validated Structs as float64 columns; integer fields must hold whole numbers.
    ``loc``: where the list sits in the body (None: one object, the body itself)."""
    flat = chain.from_iterable(map(getter, items))
    values = np.fromiter(flat, np.float64, len(items) * len(names)).reshape(len(items), -1)
    whole = _WHOLE[: len(names)]
    fractional = values[:, whole] != np.floor(values[:, whole])
    if fractional.any():
        row, col = np.argwhere(fractional)[0]
        name = np.array(names)[whole][col]
        raise _error(
            "int_from_float",
            [str(name)] if loc is None else [*loc, int(row), str(name)],
            "Input should be a valid integer, got a number with a fractional part",
            float(values[row, names.index(name)]),
        )
    cols: Columns = dict(zip(names, np.ascontiguousarray(values.T), strict=True))
    cols["pod_type"] = np.array([_POD_CODES[p] for p in map(_pod_of, items)], dtype=np.float64)
    return cols


def request_columns(items: list[PredictionRequest], loc: tuple | None = ()) -> Columns:
    return _columns(items, FEATURE_FIELDS, _features_of, loc)


def sample_columns(items: list[TrainingEntry], loc: tuple | None = ()) -> Columns:
    cols = _columns(items, SAMPLE_FIELDS, _samples_of, loc)
    for name in TARGET_FIELDS:
        tiny = np.flatnonzero(~_observed_or_zero(cols[name]))
        if tiny.size:
            row = int(tiny[0])
            raise _error(
                "greater_than_equal",
                [name] if loc is None else [*loc, row, name],
                f"Input should be 0 (not observed) or at least {bound_text(MIN_OBSERVED_LATENCY_MS)}"
                f" ms ({name})",
                float(cols[name][row]),
            )
    return cols


def _observed_or_zero(values: np.ndarray) -> np.ndarray:
    return (values == 0) | (values >= MIN_OBSERVED_LATENCY_MS)


_ONE = msgspec.json.Decoder(PredictionRequest)
_BULK = msgspec.json.Decoder(BulkPredictionRequest)
_SAMPLES = msgspec.json.Decoder(BulkTrainingRequest)
_FLUSH = msgspec.json.Decoder(FlushBody)


def decode_request(body: bytes) -> Columns:
    """Columns (one row) of a ``/predict`` body."""
    return request_columns([decode(body, _ONE)], None)


def decode_bulk(body: bytes) -> Columns:
    """Columns of a ``{"requests": [...]}`` body."""
    return request_columns(decode(body, _BULK).requests, ("requests",))


def decode_samples(body: bytes) -> Columns:
    """Columns of a ``{"entries": [...]}`` training body, observed targets included."""
    return sample_columns(decode(body, _SAMPLES).entries, ("entries",))


def decode_flush(body: bytes) -> FlushBody:
    """A ``/flush`` body; an empty body flushes everything."""
    return decode(body, _FLUSH, allow_empty=True) or FlushBody()


def parse_features(items: list, loc: tuple = ()) -> Columns:
    """Columns of already-decoded feature objects (same rules as the HTTP bodies)."""
    try:
        structs = msgspec.convert(items, list[PredictionRequest])
    except msgspec.ValidationError as exc:
        raise failure(exc, loc, items) from None
    return request_columns(structs, loc)


def parse_samples(items: list, loc: tuple = ()) -> Columns:
    """Columns of already-decoded training samples (e.g. the lines of a trace)."""
    try:
        structs = msgspec.convert(items, list[TrainingEntry])
    except msgspec.ValidationError as exc:
        raise failure(exc, loc, items) from None
    return sample_columns(structs, loc)


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
            if name in TARGET_FIELDS:
                keep &= _observed_or_zero(values)
        keep &= np.isin(np.asarray(cols["pod_type"], dtype=np.float64), list(POD_TYPES.values()))
    except (KeyError, TypeError, IndexError, ValueError) as exc:
        raise ValueError(f"not a sample batch: {exc!r}") from None
    return keep


def openapi_body(struct: type[msgspec.Struct], *, required: bool = True) -> dict[str, Any]:
    """``openapi_extra`` documenting a body that the handler decodes itself: a
    reference to the Struct in the document's components (``SCHEMA_STRUCTS``)."""
    ref = {"$ref": f"#/components/schemas/{struct.__name__}"}
    return {"requestBody": {"required": required, "content": {"application/json": {"schema": ref}}}}
