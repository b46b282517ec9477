"""Validation messages from pydantic's errors, without a server: locations, unions, unknown keys."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.tasks.fill_mask import FillMask, FillMaskRequest
from app.tasks.text_classification import ClassifyRequest, TextClassification
from app.http.validation import BodyRules, describe

EXPECTED = {"/classify": TextClassification.expected, "/fill-mask": FillMask.expected}


def message(model, path, body) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return describe(caught.value.errors(), BodyRules(model, EXPECTED[path]))


def test_a_union_that_nothing_matched_says_what_the_field_accepts():
    assert message(ClassifyRequest, "/classify", {"inputs": 5}) == (
        "inputs must be a string, a {text, text_pair} object, or a list of them"
    )


def test_the_deepest_error_explains_best():
    # A list was right; its item was not. A pair was right; its text was not.
    assert message(FillMaskRequest, "/fill-mask", {"inputs": ["a", 3]}) == "inputs[1] must be a string"
    assert message(ClassifyRequest, "/classify", {"inputs": {"text": 3}}) == "inputs.text: Input should be a valid string"


def test_a_rule_a_value_broke_keeps_its_own_message():
    assert message(ClassifyRequest, "/classify", {"inputs": "\ud800"}) == (
        "inputs: text is not valid Unicode (it holds a lone surrogate)"
    )
    assert message(ClassifyRequest, "/classify", {"inputs": "x", "parameters": {"top_k": 0}}) == (
        "parameters.top_k: Input should be greater than or equal to 1"
    )


def test_unknown_keys_are_named_short_with_the_fields_there_are():
    text = message(ClassifyRequest, "/classify", {"inputs": "x", "q" * 5000: 1})
    assert text == f"unknown field '{'q' * 40}...'; accepted: inputs, parameters, options"
    assert message(ClassifyRequest, "/classify", {"inputs": "x", "parameters": {"Top-K": 1}}) == (
        "unknown field 'Top-K' in parameters; accepted: top_k, function_to_apply, truncation"
    )


def test_at_most_three_problems_are_listed():
    text = message(ClassifyRequest, "/classify", {"inputs": [1, 2, 3, 4, 5]})
    assert text.count("must be") == 3 and text.endswith("(and 2 more)")
