"""One served model: validate -> tokenize (off the loop) -> batcher -> postprocess.

Handlers call `classify` or `fill_mask` with already-parsed bodies; everything the
model itself decides (token limits, mask tokens, targets) is checked here. Work that
grows with the input (tokenizing, resolving targets, fill-mask answers and their
decoded sequences) runs on the executor's threads, so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from app import postprocess
from app.batcher import Batcher, BatchLimits
from app.errors import DeadlineExceeded, InputTooLong, InvalidInput, TooManyAnswers
from app.metrics import ModelMetrics
from app.model_folder import ModelFolder
from app.runtime import ModelRuntime
from app.tokenize import Encoded, TextEncoder, TextInput

log = logging.getLogger("app.service")

_SHORTEN = 'Shorten it or pass "truncation": true'

MAX_MASKS = 8  # per text: each mask is a full-vocabulary softmax in the response path


@dataclass(frozen=True)
class ClassifyOptions:
    top_k: int | None = None
    function_to_apply: str | None = None
    truncation: bool = False


@dataclass(frozen=True)
class FillMaskOptions:
    top_k: int = 5
    targets: tuple[str, ...] | None = None
    truncation: bool = False


class ModelService:
    def __init__(
        self,
        folder: ModelFolder,
        encoder: TextEncoder,
        runtime: ModelRuntime,
        limits: BatchLimits,
        metrics: ModelMetrics,
        executor: Executor,
        *,
        max_mask_answers: int,  # texts x masks x top_k per request: each answer carries its filled-in sequence
    ) -> None:
        self.folder = folder
        self.encoder = encoder
        self.runtime = runtime
        self.metrics = metrics
        self.batcher = Batcher(runtime.run, pad_id=encoder.pad_id, limits=limits, metrics=metrics)
        self._executor = executor  # tokenizing and postprocessing, off the event loop
        self.max_mask_answers = max_mask_answers
        self.default_activation = postprocess.default_activation(folder.problem_type, len(folder.labels))

    @property
    def task(self) -> str:
        return self.folder.task

    async def classify(self, inputs: list[TextInput], options: ClassifyOptions, deadline: float) -> list[list[dict]]:
        for index, item in enumerate(inputs):
            texts = item if isinstance(item, tuple) else (item,)
            if any(not text.strip() for text in texts):
                raise InvalidInput(f"inputs[{index}] is empty; send some text")
        encoded = await self._encode(inputs, options.truncation)
        rows = await self._infer([e.ids for e in encoded], deadline)
        function = options.function_to_apply or self.default_activation
        return [postprocess.classify(row, self.folder.labels, function, options.top_k) for row in rows]

    async def fill_mask(self, texts: list[str], options: FillMaskOptions, deadline: float) -> tuple[list, str | None]:
        """One answer per text, and a warning about targets that had to be approximated (or None)."""
        mask = self.encoder.mask_token
        for index, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"inputs[{index}] is empty; send a text with {mask} in it")
        if options.top_k > self.encoder.vocab_size:
            raise InvalidInput(f"top_k must be at most the vocabulary size, {self.encoder.vocab_size}")
        target_ids, warning = None, None
        if options.targets is not None:
            target_ids, warning = await self._off_loop(self.target_ids, options.targets)
        encoded = await self._encode(texts, options.truncation)
        positions = [np.flatnonzero(e.ids == self.encoder.mask_id) for e in encoded]
        for index, found in enumerate(positions):
            if len(found) == 0:
                raise InvalidInput(f"inputs[{index}] has no mask token; put {mask} where the answer goes")
            if len(found) > MAX_MASKS:
                raise InvalidInput(f"inputs[{index}] has {len(found)} mask tokens; at most {MAX_MASKS} are allowed")
        per_mask = options.top_k if target_ids is None else min(options.top_k, len(target_ids))
        asked = sum(len(found) for found in positions) * per_mask
        if asked > self.max_mask_answers:
            raise TooManyAnswers(
                f"this request asks for {asked} answers (texts x masks x top_k); at most {self.max_mask_answers} "
                "are allowed: lower top_k or send fewer texts per request"
            )
        rows = await self._infer([e.ids for e in encoded], deadline, positions)
        answers = await self._off_loop(self._fill_mask_answers, rows, encoded, positions, options.top_k, target_ids)
        return answers, warning

    def _fill_mask_answers(self, rows, encoded, positions, top_k: int, target_ids) -> list:
        return [
            postprocess.fill_mask(row, e.ids, found, top_k=top_k, target_ids=target_ids, decode=self._decode)
            for row, e, found in zip(rows, encoded, positions)
        ]

    def _decode(self, sequences, skip_special_tokens: bool) -> list[str]:
        return self.encoder.decode_batch(sequences, skip_special_tokens=skip_special_tokens)

    def target_ids(self, targets: tuple[str, ...]) -> tuple[np.ndarray, str | None]:
        """transformers' rule: an exact vocabulary entry, else the word's first sub-token (with a warning)."""
        ids, replaced, ignored = [], [], []
        for target in targets:
            token_id = self.encoder.token_id(target)
            if token_id is None:
                token_id = self.encoder.first_subtoken(target)
                if token_id is None:
                    ignored.append(target)
                    continue
                replaced.append((target, self.encoder.id_to_token(token_id) or ""))
            ids.append(token_id)
        if not ids:
            raise InvalidInput("targets must name at least one word the model can produce")
        return np.array(sorted(set(ids)), dtype=np.int64), postprocess.targets_warning(replaced, ignored)

    async def _encode(self, inputs: list[TextInput], truncation: bool) -> list[Encoded]:
        self.batcher.check_room(len(inputs))  # refuse before tokenizing: overload should cost little
        limit = self.encoder.max_seq_len
        if not truncation:
            for index, item in enumerate(inputs):
                if self.encoder.surely_too_long(item):
                    raise InputTooLong(f"inputs[{index}] is longer than {limit} tokens, the most the model takes. {_SHORTEN}")
        started = time.perf_counter()
        encoded = await self._off_loop(self.encoder.encode, inputs, truncate=truncation)
        self.metrics.tokenize.observe(time.perf_counter() - started)
        for index, item in enumerate(encoded):
            if len(item) > limit:
                raise InputTooLong(f"inputs[{index}] is {len(item)} tokens; the model takes at most {limit}. {_SHORTEN}")
        return encoded

    async def _off_loop(self, function, *args, **kwargs):
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(function, *args, **kwargs))

    async def _infer(self, sequences: list[np.ndarray], deadline: float, positions=None) -> list[np.ndarray]:
        futures = self.batcher.submit(sequences, deadline, positions)
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise DeadlineExceeded("the request did not finish before its deadline") from None
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # mark retrieved: a failed batch fails every member at once

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.runtime.close()

    def info(self) -> dict:
        limits = self.batcher.limits
        return {
            "task": self.task,
            "labels": list(self.folder.labels) or None,
            "precision": self.runtime.precision,
            "providers": self.runtime.providers_in_use,
            "file": self.folder.files[self.runtime.precision].name,
            "max_seq_len": self.folder.max_seq_len,
            "mask_token": self.encoder.mask_token if self.task == "fill-mask" else None,
            "default_activation": self.default_activation if self.task == "text-classification" else None,
            "batching": {
                "max_batch_size": limits.max_batch_size,
                "max_batch_tokens": limits.max_batch_tokens,
                "max_wait_ms": limits.max_wait_s * 1000,
                "max_queue": limits.max_queue,
                "run_overhead_tokens": round(limits.run_overhead_tokens, 1),
            },
            "export": {
                "source": source_name(self.folder.manifest.get("source") or {}),
                "created_at": self.folder.manifest.get("created_at"),
                "format_version": self.folder.manifest.get("format_version"),
            },
        }


def source_name(source: dict) -> str | None:
    """What the model was exported from, without the exporting machine's paths: a hub id, or a folder's name."""
    model = source.get("model")
    if not model or source.get("revision"):  # a hub id (it has a revision) is public already
        return model
    return Path(str(model)).name or None
