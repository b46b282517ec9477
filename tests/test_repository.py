"""Many models in one process: where they come from, their names and defaults, the /models routes,
per-model metrics, and huggingface_hub's InferenceClient against every task."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError

from app.errors import NotFound
from app.serving.metrics import Metrics
from app.serving.model_folder import ModelFolderError
from app.serving.model_sources import model_sources
from app.serving.repository import ModelRepository
from app.settings import Settings
from app.tasks.registry import build_tasks
from server import REPO, ServerThread, metric_value

TEXT = "Marie Curie moved from Warsaw to Paris, and the film about her is wonderful."


@pytest.fixture(scope="module")
def served(model_repository):
    with ServerThread(Settings(model_repository=model_repository, backend="onnxruntime", max_wait_ms=1)) as server:
        yield server


def test_a_repository_serves_every_export_named_by_its_folder(model_repository):
    sources = model_sources(Settings(model_repository=model_repository))
    assert sorted(source.name for source in sources) == ["mlm", "ner", "nli", "sentiment"]  # not notes, not hidden


@pytest.mark.parametrize(
    ("models", "says"),
    [("sentiment", "is not name=folder"), ("a=/x,a=/y", "given twice"), ("bad name=/x", "must be letters"), ("a=", "name=folder")],
)
def test_named_models_that_cannot_be_parsed_are_a_settings_error(models, says):
    with pytest.raises(ValidationError, match=says):
        Settings(models=models)


def test_old_settings_name_models_by_folder_and_make_them_defaults(exported_classifier, exported_ner):
    settings = Settings(classify_model=exported_classifier, models=f"tags={exported_ner}")
    repository = ModelRepository.build(settings, Metrics(), None, build_tasks(settings))
    assert repository.names == ["tags", "cls"]
    assert repository.default("text-classification").name == "cls"
    assert repository.default("token-classification").name == "tags"  # the only one of its task
    with pytest.raises(NotFound, match="no fill-mask model is loaded; the models are: tags, cls"):
        repository.default("fill-mask")
    for model in repository:
        model.engine.close()


def test_one_name_for_two_folders_is_refused(exported_classifier, exported_mlm):
    with pytest.raises(ModelFolderError, match="model name 'cls' names two folders"):
        model_sources(Settings(classify_model=exported_classifier, models=f"cls={exported_mlm}"))


def test_a_model_that_does_not_load_fails_start_up_with_one_line_naming_it(tmp_path, exported_classifier, exported_ner):
    shutil.copytree(exported_classifier, tmp_path / "good")
    shutil.copytree(exported_ner, tmp_path / "broken")
    for onnx in (tmp_path / "broken").glob("*.onnx"):
        onnx.write_bytes(b"not a model")
    result = subprocess.run(
        [sys.executable, "-m", "app", "--model-repository", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip() and " INFO " not in line]
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("error: model 'broken' (ROBERTA_MODEL_REPOSITORY): "), lines


def test_models_lists_every_model_with_its_task_labels_precision_provider_and_readiness(served):
    listed = {model["name"]: model for model in httpx.get(f"{served.url}/models").json()["models"]}
    assert {name: model["task"] for name, model in listed.items()} == {
        "mlm": "fill-mask", "ner": "token-classification", "nli": "text-classification", "sentiment": "text-classification",
    }
    assert listed["nli"]["tasks"] == ["text-classification", "zero-shot-classification"]
    assert listed["nli"]["labels"] == ["contradiction", "neutral", "entailment"] and listed["mlm"]["labels"] is None
    assert listed["ner"]["labels"][:3] == ["O", "B-PER", "I-PER"]
    for model in listed.values():
        assert model["ready"] is True and model["provider"] == "cpu" and model["precision"] in ("int8", "fp32")
        assert model["memory_bytes"] > 0
    one = httpx.get(f"{served.url}/models/ner").json()
    assert one["name"] == "ner" and one["default_for"] == ["token-classification"]


def test_every_model_has_its_own_session_batcher_and_metrics(served):
    models = list(served.state.models)
    assert len({id(model.batcher) for model in models}) == len({id(model.engine) for model in models}) == 4
    for model in models:  # several sessions share the cores: their threads must not spin on each other's
        options = model.engine._session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    for name in ("sentiment", "ner"):
        before = metric_value(served.url, "roberta_batch_size_count", model=name)
        assert httpx.post(f"{served.url}/models/{name}", json={"inputs": TEXT}).status_code == 200
        assert metric_value(served.url, "roberta_batch_size_count", model=name) == before + 1
        assert metric_value(served.url, "roberta_requests_total", endpoint="/models/{name}", model=name, status="200") >= 1
        assert metric_value(served.url, "roberta_model_memory_bytes", model=name) > 0
    tasks = {m: metric_value(served.url, "roberta_model_info", model=m, task=t) for m, t in [("ner", "token-classification"), ("mlm", "fill-mask")]}
    assert tasks == {"ner": 1, "mlm": 1}


def test_unknown_names_and_ambiguous_defaults_are_404s_that_name_the_models(served):
    unknown = httpx.post(f"{served.url}/models/nope", json={"inputs": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"].endswith("the models are: mlm, ner, nli, sentiment")
    assert httpx.get(f"{served.url}/models/nope").status_code == 404
    ambiguous = httpx.post(f"{served.url}/classify", json={"inputs": "x"})
    assert ambiguous.status_code == 404 and "2 text-classification models are loaded (nli, sentiment)" in ambiguous.json()["error"]
    for route, body in [("/fill-mask", {"inputs": "a <mask>."}), ("/token-classification", {"inputs": "x"}),
                        ("/zero-shot-classification", {"inputs": "x", "parameters": {"candidate_labels": ["a"]}})]:
        assert httpx.post(f"{served.url}{route}", json=body).status_code == 200, route


def test_a_parameter_of_another_task_is_a_422_naming_it(served):
    wrong = httpx.post(f"{served.url}/models/sentiment", json={"inputs": "x", "parameters": {"aggregation_strategy": "simple"}})
    assert wrong.status_code == 422
    assert "'aggregation_strategy' is a token-classification parameter, and model 'sentiment' does not do" in wrong.json()["error"]
    zero_shot = httpx.post(f"{served.url}/models/sentiment", json={"inputs": "x", "parameters": {"candidate_labels": ["a"]}})
    assert zero_shot.status_code == 422 and "zero-shot-classification parameter" in zero_shot.json()["error"]
    for body, status in [(b"{", 400), (b"", 400), (b"[1]", 422)]:
        response = httpx.post(f"{served.url}/models/ner", content=body, headers={"content-type": "application/json"})
        assert response.status_code == status and set(response.json()) == {"error", "error_type", "request_id"}
    as_text = httpx.post(f"{served.url}/models/ner", content=b'{"inputs": "x"}', headers={"content-type": "text/plain"})
    assert as_text.status_code == 415


def test_inference_client_works_unchanged_for_every_task(served):
    from huggingface_hub import InferenceClient

    def client(name: str) -> InferenceClient:
        return InferenceClient(model=f"{served.url}/models/{name}")

    def direct(name: str, body: dict):
        return httpx.post(f"{served.url}/models/{name}", json=body).json()

    labels = client("sentiment").text_classification(TEXT, top_k=1)
    assert [(x.label, round(x.score, 6)) for x in labels] == [(x["label"], round(x["score"], 6)) for x in direct("sentiment", {"inputs": TEXT, "parameters": {"top_k": 1}})[0]]
    filled = client("mlm").fill_mask("The film was <mask>.", top_k=3)
    assert [x.token_str for x in filled] == [x["token_str"] for x in direct("mlm", {"inputs": "The film was <mask>.", "parameters": {"top_k": 3}})]
    entities = client("ner").token_classification(TEXT, aggregation_strategy="first", ignore_labels=["O", "MISC"])
    expected = direct("ner", {"inputs": TEXT, "parameters": {"aggregation_strategy": "first", "ignore_labels": ["O", "MISC"]}})
    assert [(e.entity_group, e.word, e.start, e.end) for e in entities] == [(e["entity_group"], e["word"], e["start"], e["end"]) for e in expected]
    assert entities, "the tiny model should tag something"
    chosen = client("nli").zero_shot_classification(TEXT, ["science", "cinema", "travel"], multi_label=True)
    answer = direct("nli", {"inputs": TEXT, "parameters": {"candidate_labels": ["science", "cinema", "travel"], "multi_label": True}})
    assert [x.label for x in chosen] == answer["labels"] and [x.score for x in chosen] == pytest.approx(answer["scores"])


def test_every_spec_has_its_task_and_each_task_its_specs_name_and_route():
    from app.tasks.registry import task_types
    from app.tasks.specs import SPECS

    types = task_types()
    assert list(types) == list(SPECS)
    for name, task in types.items():
        assert (task.name, task.route) == (SPECS[name].name, SPECS[name].route)
