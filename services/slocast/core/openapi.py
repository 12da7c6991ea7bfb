"""OpenAPI for bodies that handlers parse themselves (FastAPI never sees their models)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel


def add_body_schemas(doc: dict[str, Any], models: Iterable[type[BaseModel]]) -> None:
    """Put each model's schema, nested models included, under ``components.schemas``,
    with every ``$ref`` pointing there (pydantic's own ``$defs`` would not resolve)."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(schema.pop("$defs", {}))
        components[model.__name__] = schema
