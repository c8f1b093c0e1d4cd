"""Constrained decoding per row: a mixed batch whose rows have different schemas, adapters and
none at all; every constrained answer parses and validates, unconstrained rows are untouched."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from adapterhub.engine import GenerationRequest, SamplingParams
from adapterhub.engine.grammar import json_schema_grammar
from adapterhub.errors import ConfigError

VERDICT = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no", "maybe"]}, "sure": {"type": "boolean"}},
    "required": ["answer", "sure"],
    "additionalProperties": False,
}
COLOURS = {
    "type": "object",
    "properties": {"colours": {"type": "array", "items": {"enum": ["red", "green"]}, "minItems": 1, "maxItems": 3}},
    "required": ["colours"],
    "additionalProperties": False,
}


def test_rows_with_different_schemas_adapters_and_none(make_engine: Any, peft_ref: Any, prompts: list[list[int]]) -> None:
    engine = make_engine(max_slots=3)
    plan = [(VERDICT, "alpha"), (COLOURS, "beta"), (None, None), (VERDICT, None), (COLOURS, "gamma")]
    results = engine.generate_many([
        GenerationRequest(tuple(prompts[i % len(prompts)]), adapter=adapter, sampling=SamplingParams(
            max_tokens=60, grammar=json_schema_grammar(schema) if schema else None))
        for i, (schema, adapter) in enumerate(plan)
    ])
    for i, ((schema, adapter), result) in enumerate(zip(plan, results, strict=True)):
        if schema is None:  # no grammar: exactly the unconstrained greedy answer
            assert list(result.token_ids) == peft_ref.greedy(prompts[i % len(prompts)], adapter, len(result.token_ids))
            continue
        assert result.finish_reason == "stop", result
        jsonschema.validate(json.loads(result.text), schema)


def test_a_schema_the_library_cannot_compile_is_refused_at_submit(make_engine: Any, prompts: list[list[int]]) -> None:
    engine = make_engine()
    with pytest.raises(ConfigError, match="response_format.*bogus"):
        engine.submit(GenerationRequest(tuple(prompts[0]), sampling=SamplingParams(
            grammar=json_schema_grammar({"type": "bogus"}))), lambda chunk: None)
