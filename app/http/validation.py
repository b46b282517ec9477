"""Pydantic's validation errors -> one message a person can act on, naming the field and what it accepts.

Pydantic reports a union by trying every member, so a wrong `inputs` yields three errors
located at its internal type names (`inputs.function-after[_encodable(), str]: Input should
be a valid string; inputs.TextPair: ...`). Here locations keep only field names and list
indexes, the deepest explanation wins (a list of numbers is wrong in its items, not in being
a list), a union that nothing matched says what the field accepts, and whatever the client
sent (an unknown key included) is never echoed past 40 characters.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

_FIELD = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}
MOST_SHOWN = 3


@dataclass(frozen=True)
class BodyRules:
    """What a message about one route's body can say.

    `model` is the request body's model (for the fields an unknown key could have been),
    `expected` what a union field accepts, by location (`inputs`, `inputs[]` for a list's items),
    `elsewhere` which task takes a parameter this body does not (`aggregation_strategy` sent to a classifier).
    """

    model: type[BaseModel] | None = None
    expected: Mapping[str, str] = field(default_factory=dict)
    elsewhere: Mapping[str, str] = field(default_factory=dict)
    nearby: Mapping[str, str] = field(default_factory=dict)  # every task's parameters, for "did you mean"


def parameters_of(tasks: Mapping[str, object], leave_out: set[str]) -> dict[str, str]:
    """Parameter name -> the first task that takes it (its body's `parameters` model), among `tasks` other than
    those in `leave_out`: what a message can say of a parameter sent to the wrong task."""
    found: dict[str, str] = {}
    for name, task in tasks.items():
        parameters = task.request.model_fields.get("parameters")  # type: ignore[attr-defined]
        annotation = parameters.annotation if parameters is not None else None
        if name not in leave_out and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            for field_name in annotation.model_fields:
                found.setdefault(field_name, name)
    return found


def describe(errors: Sequence[Mapping], rules: BodyRules | None = None, *, model_name: str | None = None) -> str:
    """`inputs must be a string or a list of strings` or `parameters.top_k: Input should be ...` (at most 3 of them)."""
    rules = rules or BodyRules()
    groups: dict[tuple, list[Mapping]] = {}
    for error in errors:
        loc = _fields_only(error.get("loc", ()), keep_last=error.get("type") == "extra_forbidden")
        groups.setdefault(loc, []).append(error)
    deepest = [loc for loc in groups if not any(other[: len(loc)] == loc and other != loc for other in groups)]
    parts = [_describe_one(loc, groups[loc], rules, model_name) for loc in deepest[:MOST_SHOWN]]
    more = f" (and {len(deepest) - MOST_SHOWN} more)" if len(deepest) > MOST_SHOWN else ""
    return "; ".join(parts) + more


def _describe_one(loc: tuple, errors: list[Mapping], rules: BodyRules, model_name: str | None) -> str:
    name = _display(loc)
    unknown = [error for error in errors if error.get("type") == "extra_forbidden"]
    if unknown:
        parent = loc[:-1]
        accepted = _accepted_fields(rules.model, parent)
        where = f" in {_display(parent)}" if parent else ""
        listing = f"; accepted: {', '.join(accepted)}" if accepted else ""
        other = rules.elsewhere.get(str(loc[-1])) if parent == ("parameters",) else None
        who = f"model {model_name!r}" if model_name else "this endpoint"
        if other is not None:
            return f"{_quoted(str(loc[-1]))} is a {other} parameter, and {who} does not do {other}{listing}"
        sent = unknown[0].get("input")
        if loc == ("parameters",) and isinstance(sent, Mapping):  # a body whose task takes its options at the top level
            theirs = [(str(key), rules.elsewhere[str(key)]) for key in sent if str(key) in rules.elsewhere]
            if theirs:
                key, other = theirs[0]
                return (f"{_quoted(key)} is a {other} parameter, and {who} does not do {other}; its body has no "
                        f"parameters object{listing}")
        return f"unknown field {_quoted(str(loc[-1]))}{where}{listing}{_closest(str(loc[-1]), accepted, rules, parent)}"
    if not loc and errors[0].get("type") in ("model_type", "model_attributes_type", "dict_type"):
        return "the body must be a JSON object"
    if any(error.get("type") == "missing" for error in errors):
        return f"{name} is required"
    specific = [error for error in errors if not str(error.get("type", "")).endswith("_type")]
    if specific:  # a rule the value broke (a range, a lone surrogate): its own message is the clearest
        return f"{name}: {str(specific[0].get('msg', 'invalid')).removeprefix('Value error, ')}"
    key = _pattern(loc)
    if key in rules.expected:
        return f"{name} must be {rules.expected[key]}"
    return f"{name}: {errors[0].get('msg', 'invalid')}"


def _closest(key: str, accepted: list[str], rules: BodyRules, parent: tuple) -> str:
    """`; did you mean 'top_k'?` for a misspelt field, naming the task when the field is another task's parameter."""
    others = [name for name in rules.nearby if name not in accepted] if parent == ("parameters",) else []
    close = difflib.get_close_matches(key[:60], accepted + others, n=1, cutoff=0.75)
    if not close:
        return ""
    if close[0] in accepted:
        return f"; did you mean {close[0]!r}?"
    return f"; did you mean {close[0]!r}, a {rules.nearby[close[0]]} parameter?"


def _fields_only(loc: Sequence, *, keep_last: bool = False) -> tuple:
    """('body', 'inputs', 'list[union[...]]', 0, 'TextPair', 'text') -> ('inputs', 0, 'text').

    `keep_last` keeps the last part whatever it is: the key a client sent that is not a field.
    """
    parts = [part for part in loc if part != "body"]
    kept = [part for part in parts[:-1] if _is_field(part)]
    if parts:
        kept += [parts[-1]] if keep_last or _is_field(parts[-1]) else []
    return tuple(kept)


def _is_field(part) -> bool:
    return isinstance(part, int) or (bool(_FIELD.match(str(part))) and part not in _TYPE_TAGS)


def _display(loc: tuple) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            part = str(part) if len(str(part)) <= 40 else str(part)[:40] + "..."
            text += f".{part}" if text else part
    return text or "body"


def _pattern(loc: tuple) -> str:
    """`inputs[3].text` -> `inputs[].text`: the key `expected` is looked up by."""
    return "".join("[]" if isinstance(part, int) else (f".{part}" if index else str(part)) for index, part in enumerate(loc))


def _accepted_fields(model: type[BaseModel] | None, parent: tuple) -> list[str]:
    for name in parent:
        if model is None or isinstance(name, int):
            return []
        field = model.model_fields.get(name)
        annotation = field.annotation if field is not None else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _quoted(text: str, most: int = 40) -> str:
    return repr(text if len(text) <= most else text[:most] + "...")
