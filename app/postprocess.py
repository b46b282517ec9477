"""Logits -> answers, shaped as transformers' pipelines shape them. Pure functions of arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ACTIVATIONS = ("softmax", "sigmoid", "none")


def default_activation(problem_type: str | None, num_labels: int) -> str:
    """transformers' TextClassificationPipeline rule, in the same order."""
    if problem_type == "multi_label_classification" or num_labels == 1:
        return "sigmoid"
    if problem_type == "single_label_classification" or num_labels > 1:
        return "softmax"
    return "none"


def activate(logits: np.ndarray, function: str) -> np.ndarray:
    logits = logits.astype(np.float32, copy=False)
    if function == "softmax":
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    if function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if function == "none":
        return logits
    raise ValueError(f"unknown activation {function!r}; use one of {ACTIVATIONS}")


def label_scores(scores: np.ndarray, labels: Sequence[str], top_k: int | None) -> list[dict]:
    """Labels by descending score, cut to top_k (None: all)."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def classify(logits: np.ndarray, labels: Sequence[str], function: str, top_k: int | None) -> list[dict]:
    return label_scores(activate(logits, function), labels, top_k)


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
    probs = activate(mask_logits, "softmax")
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
