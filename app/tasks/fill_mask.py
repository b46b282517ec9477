"""Fill-mask: the likeliest tokens where the mask token is, as transformers' FillMaskPipeline.

The model computes vocabulary logits only at the mask positions it is given (the
`mask_positions` input of the export), so those are the rows it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, Field

from app.errors import InvalidInput, TooManyAnswers
from app.serving.model_folder import ModelFolderError
from app.tasks.specs import SPECS
from app.tasks.schemas import Options, Strict, Text, encodable
from app.settings import Settings
from app.tasks.base import Answer, Cost, Model, Task, Work, check_not_blank, cost_of_texts, softmax, texts_of


MAX_MASKS = 8  # per text: each mask is a full-vocabulary softmax in the response path
MAX_TOP_K = 100  # answers per mask; the request as a whole is capped too (ANSWERS_PER_INPUT)
MAX_TARGETS = 1000
MAX_TARGET_CHARS = 100  # a target is a word: only its first sub-token can be an answer


def _a_word(text: str) -> str:
    if not text.strip():
        raise ValueError("a target must be a word, not empty or blank")
    return text


Target = Annotated[str, Field(max_length=MAX_TARGET_CHARS), AfterValidator(encodable), AfterValidator(_a_word)]


# Fill-mask answers one request may ask for (texts x masks x top_k), per input max_inputs allows: each answer
# carries its filled-in sequence, so this bounds what one request makes the server render and send.
ANSWERS_PER_INPUT = 32

class FillMaskParameters(BaseModel):
    model_config = Strict
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="answers per mask")
    targets: Annotated[list[Target], Field(min_length=1, max_length=MAX_TARGETS)] | Target | None = Field(
        None, description="restrict answers to these words"
    )
    truncation: bool = Field(False, description="cut inputs longer than the model's limit instead of refusing them (413)")


class FillMaskRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
    parameters: FillMaskParameters = Field(default_factory=FillMaskParameters)
    options: Options = None


class FillMaskAnswer(BaseModel):
    score: float
    token: int
    token_str: str
    sequence: str


# A text with one mask -> list of answers; several masks -> one list per mask; a list of texts -> one of those each.
FillMaskText = list[FillMaskAnswer] | list[list[FillMaskAnswer]]


class FillMask(Task):
    spec = SPECS["fill-mask"]
    summary = "Fill the mask token in texts"
    request = FillMaskRequest
    response = FillMaskText | list[FillMaskText]
    large_answers = True  # each answer carries its filled-in sequence, decoded
    expected = {
        "inputs": "a string or a list of strings",
        "inputs[]": "a string",
        "parameters.targets": "a word or a list of words",
        "parameters.targets[]": "a word (a string)",
    }

    def __init__(self, max_answers: int) -> None:
        self.max_answers = max_answers  # texts x masks x top_k per request: each answer carries its filled-in sequence

    @classmethod
    def from_settings(cls, settings: Settings) -> FillMask:
        return cls(settings.max_inputs * ANSWERS_PER_INPUT)

    def check(self, model: Model) -> None:
        if model.encoder.mask_id is None:
            raise ModelFolderError(f"{model.folder.path}: its tokenizer has no {model.encoder.mask_token} token")
        if not model.takes_positions:
            raise ModelFolderError(f"{model.folder.path}: its graph takes no mask positions; re-export it with "
                                   "`python -m export`")

    def cost(self, body: FillMaskRequest, model: Model) -> Cost:
        return cost_of_texts(texts_of(body.inputs))

    async def prepare(self, model: Model, body: FillMaskRequest, deadline: float) -> Work:
        texts, options, encoder = texts_of(body.inputs), body.parameters, model.encoder
        check_not_blank(texts, f"a text with {encoder.mask_token} in it")
        if options.top_k > encoder.vocab_size:
            raise InvalidInput(f"top_k must be at most the vocabulary size, {encoder.vocab_size}")
        target_ids, warning = None, None
        if options.targets is not None:
            targets = (options.targets,) if isinstance(options.targets, str) else tuple(options.targets)
            target_ids, warning = await model.off_loop(resolve_targets, encoder, targets)
        encoded = await model.encode(texts, options.truncation, deadline)
        positions = [np.flatnonzero(e.ids == encoder.mask_id) for e in encoded]
        for index, found in enumerate(positions):
            if len(found) == 0:
                raise InvalidInput(f"inputs[{index}] has no mask token; put {encoder.mask_token} where the answer goes")
            if len(found) > MAX_MASKS:
                raise InvalidInput(f"inputs[{index}] has {len(found)} mask tokens; at most {MAX_MASKS} are allowed")
        per_mask = options.top_k if target_ids is None else min(options.top_k, len(target_ids))
        asked = sum(len(found) for found in positions) * per_mask
        if asked > self.max_answers:
            raise TooManyAnswers(
                f"this request asks for {asked} answers (texts x masks x top_k); at most {self.max_answers} "
                "are allowed: lower top_k or send fewer texts per request"
            )
        return Work([e.ids for e in encoded], (target_ids, warning), positions)

    def answer(self, model: Model, body: FillMaskRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        encoder, (target_ids, warning) = model.encoder, work.context

        def decode(sequences, skip_special_tokens: bool) -> list[str]:
            return encoder.decode_batch(sequences, skip_special_tokens=skip_special_tokens)

        answers = [
            fill_mask(row["logits"], ids, found, top_k=body.parameters.top_k, target_ids=target_ids, decode=decode)
            for row, ids, found in zip(rows, work.sequences, work.positions)
        ]
        content = answers[0] if isinstance(body.inputs, str) else answers
        return Answer(content, headers={"X-Warning": warning} if warning else None)

    def info(self, model: Model) -> dict:
        return {"mask_token": model.encoder.mask_token}


def resolve_targets(encoder, targets: tuple[str, ...]) -> tuple[np.ndarray, str | None]:
    """transformers' rule: an exact vocabulary entry, else the word's first sub-token (with a warning)."""
    ids, replaced, ignored = [], [], []
    for target in targets:
        token_id = encoder.token_id(target)
        if token_id is None:
            token_id = encoder.first_subtoken(target)
            if token_id is None:
                ignored.append(target)
                continue
            replaced.append((target, encoder.id_to_token(token_id) or ""))
        ids.append(token_id)
    if not ids:
        raise InvalidInput("targets must name at least one word the model can produce")
    return np.array(sorted(set(ids)), dtype=np.int64), targets_warning(replaced, ignored)


def fill_mask(
    mask_logits: np.ndarray,
    input_ids: np.ndarray,
    mask_positions: np.ndarray,
    *,
    top_k: int,
    target_ids: np.ndarray | None,
    decode: Callable[[Sequence[Sequence[int]], bool], list[str]],
) -> list[list[dict]] | list[dict]:
    """One text's answer: a flat list for one mask, one list per mask for several (the pipeline's shape).

    `mask_logits` holds the rows at `mask_positions` only; `input_ids` is the text
    unpadded. `decode(sequences, skip_special_tokens)` turns lists of ids into texts, all
    at once: a request's answers are thousands of decoded sequences, and one call for
    them all is what lets the tokenizer work without holding the interpreter.
    """
    probs = softmax(mask_logits)
    if target_ids is not None:
        probs = probs[:, target_ids]
        top_k = min(top_k, len(target_ids))
    single = len(mask_positions) == 1
    picks = []  # (row, position, token, score) in answer order
    for row, position in enumerate(mask_positions):
        for index in _top_k(probs[row], top_k):
            token = int(target_ids[index]) if target_ids is not None else int(index)
            picks.append((row, int(position), token, float(probs[row, index])))
    prefix = input_ids.tolist()
    filled = []
    for _, position, token, _ in picks:
        sequence = prefix.copy()
        sequence[position] = token
        filled.append(sequence)
    token_strs = decode([[token] for _, _, token, _ in picks], False)
    sequences = decode(filled, single)
    answers: list[list[dict]] = [[] for _ in mask_positions]
    for (row, _, token, score), token_str, sequence in zip(picks, token_strs, sequences):
        answers[row].append({"score": score, "token": token, "token_str": token_str, "sequence": sequence})
    return answers[0] if single else answers


def _top_k(values: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(values))
    if k < len(values):
        candidates = np.argpartition(-values, k - 1)[:k]
    else:
        candidates = np.arange(len(values))
    return candidates[np.argsort(-values[candidates], kind="stable")]


def targets_warning(replaced: Sequence[tuple[str, str]], ignored: Sequence[str], limit: int = 1024) -> str | None:
    """The X-Warning for targets that are not one token: counts, then as many examples as fit in `limit` bytes.

    Header-safe (ASCII, escapes for the rest) and short whatever the request held: a client must be
    able to read the answer, and a target is never echoed past 40 characters.
    """
    if not replaced and not ignored:
        return None
    parts = []
    if replaced:
        examples = [f"{_quoted(target)} as {_quoted(token)}" for target, token in replaced]
        parts.append((f"{len(replaced)} target(s) not in the vocabulary stand for their first sub-token", examples))
    if ignored:
        parts.append((f"{len(ignored)} target(s) not in the vocabulary were ignored", [_quoted(t) for t in ignored]))
    text = "; ".join(f"{summary}: {', '.join(examples[:3])}{', ...' if len(examples) > 3 else ''}" for summary, examples in parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quoted(text: str, most: int = 40) -> str:
    shown = text if len(text) <= most else text[:most] + "..."
    return repr(shown).encode("ascii", "backslashreplace").decode("ascii")
