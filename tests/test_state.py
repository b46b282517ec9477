"""Start-up order and readiness, through the real lifespan pieces on a tiny export."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.errors import NotFound, NotReady
from app.serving.metrics import Metrics
from app.serving.model_folder import ModelFolderError
from app.settings import Settings
from app.serving.state import FAILURES_BEFORE_UNREADY, AppState
from app.tasks.registry import build_tasks
from app.tasks.base import Cost


def build(settings: Settings) -> AppState:
    return AppState.build(settings, Metrics(), build_tasks(settings))


def test_not_ready_until_warm_then_ready_then_draining(exported_classifier):
    async def scenario():
        state = build(Settings(classify_model=exported_classifier))
        before = state.readiness()
        with pytest.raises(NotReady):
            state.model(task="text-classification")
        await state.start()
        await state._warm_up_task
        warm = state.readiness()
        with pytest.raises(NotFound, match="no fill-mask model is loaded; the models are: cls"):
            state.model(task="fill-mask")
        state.models.get("cls").batcher.consecutive_failures = FAILURES_BEFORE_UNREADY
        failing = state.readiness()
        state.models.get("cls").batcher.consecutive_failures = 0
        await state.stop()
        return before, warm, failing, state.readiness()

    before, warm, failing, after = asyncio.run(scenario())
    assert before == (False, "models are warming up")
    assert warm == (True, "ready")
    assert failing == (False, "inference keeps failing for cls")
    assert after == (False, "the server is shutting down")


def test_a_folder_of_the_wrong_task_is_refused_at_start(exported_mlm):
    with pytest.raises(ModelFolderError, match="holds a 'fill-mask' model"):
        build(Settings(classify_model=exported_mlm))


def test_an_export_of_another_manifest_format_is_refused_at_start_with_one_line_to_re_export(exported_mlm, tmp_path):
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(exported_mlm, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["format_version"] = 1  # fill-mask logits at every position, before mask_positions
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFolderError, match=r"manifest format 1, this service reads 2\); re-export it with "
                                               r"`python -m export SOURCE --output FOLDER --reuse`"):
        build(Settings(fill_mask_model=old))


def test_precision_that_was_not_exported_is_refused_at_start(exported_classifier):
    with pytest.raises(ModelFolderError, match="re-export with --fp16"):
        build(Settings(classify_model=exported_classifier, precision="fp16"))


def test_drain_goes_unready_at_once_admits_during_the_delay_then_waits_for_admitted_requests(exported_classifier):
    async def scenario():
        state = build(Settings(classify_model=exported_classifier))
        await state.start()
        await state._warm_up_task
        seen = {}
        model, one = state.model(task="text-classification"), Cost(1, 4)
        with state.admit(model, one):
            drain = asyncio.create_task(state.drain(delay_s=0.2, deadline=time.monotonic() + 5))
            await asyncio.sleep(0.05)
            seen["readiness during delay"] = state.readiness()[0]
            with state.admit(model, one):  # still admitted while load balancers catch up
                seen["in flight"] = state.in_flight
            await asyncio.sleep(0.3)
            with pytest.raises(NotReady, match="shutting down"):
                state.model(task="text-classification")
            seen["drain done while a request runs"] = drain.done()
        seen["drained"] = await drain
        await state.stop()
        return seen

    seen = asyncio.run(scenario())
    assert seen == {
        "readiness during delay": False,
        "in flight": 2,
        "drain done while a request runs": False,
        "drained": True,
    }
