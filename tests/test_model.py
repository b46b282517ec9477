"""app.model.ServedModel: where a request's texts are tokenized."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.metrics import Metrics
from app.model import INLINE_TOKENIZE_CHARS
from app.settings import Settings
from app.state import AppState


def tokenizing_threads(folder, monkeypatch, cores: int) -> tuple[list[str], int]:
    """The thread each of a short and a long input was tokenized on, in a process with `cores` cores."""
    monkeypatch.setattr("app.repository.usable_cores", lambda: cores)

    async def scenario():
        state = AppState.build(Settings(classify_model=folder), Metrics())
        model = state.models.get("cls")
        seen, encode = [], model.encoder.encode

        def spy(inputs, **options):
            seen.append(threading.current_thread().name)
            return encode(inputs, **options)

        model.encoder.encode = spy
        short = await model.encode(["a fine film"], False)
        long = await model.encode([("word " * INLINE_TOKENIZE_CHARS)[: INLINE_TOKENIZE_CHARS + 1]], True)
        assert list(short[0].ids) == encode(["a fine film"])[0].ids.tolist()
        assert len(long[0]) == model.encoder.max_seq_len  # truncated there as on the thread
        inline = model.info()["inline_tokenize_chars"]
        await state.stop()
        state.executor.shutdown()
        return seen, inline

    return asyncio.run(scenario())


def test_one_core_tokenizes_short_inputs_on_the_event_loop_and_long_ones_on_the_thread(exported_classifier, monkeypatch):
    seen, inline = tokenizing_threads(exported_classifier, monkeypatch, cores=1)
    assert inline == INLINE_TOKENIZE_CHARS
    assert seen == [threading.main_thread().name, "tokenize_0"]


@pytest.mark.parametrize("cores", [2, 4])
def test_several_cores_tokenize_every_input_on_the_thread(exported_classifier, monkeypatch, cores):
    seen, inline = tokenizing_threads(exported_classifier, monkeypatch, cores=cores)
    assert inline == 0
    assert seen == ["tokenize_0", "tokenize_0"]
