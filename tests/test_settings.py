from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings


def test_environment_variables_use_the_roberta_prefix(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBERTA_CLASSIFY_MODEL", str(tmp_path))
    monkeypatch.setenv("ROBERTA_PROVIDERS", "CPU, cuda")
    monkeypatch.setenv("ROBERTA_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("ROBERTA_API_KEY", "s3cret")
    settings = Settings()
    assert settings.classify_model == tmp_path
    assert settings.providers == ("cpu", "cuda")
    assert settings.max_batch_size == 8
    assert settings.api_key.get_secret_value() == "s3cret" and "s3cret" not in repr(settings)


def test_cli_flags_have_the_same_names(tmp_path):
    settings = Settings(
        _cli_parse_args=["--fill-mask-model", str(tmp_path), "--max-wait-ms", "2.5", "--precision", "int8",
                         "--providers", "cuda,cpu"],
        _cli_kebab_case=True,
    )
    assert settings.fill_mask_model == tmp_path and settings.max_wait_ms == 2.5 and settings.precision == "int8"
    assert settings.providers == ("cuda", "cpu")


@pytest.mark.parametrize(
    "env",
    [
        {},  # no model at all
        {"ROBERTA_CLASSIFY_MODEL": "x", "ROBERTA_PROVIDERS": "tpu"},
        {"ROBERTA_CLASSIFY_MODEL": "x", "ROBERTA_MAX_BATCH_SIZE": "0"},
        {"ROBERTA_CLASSIFY_MODEL": "x", "ROBERTA_PRECISION": "int4"},
    ],
)
def test_bad_settings_fail_loudly(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_the_default_deadline_must_fit_under_the_maximum(tmp_path):
    with pytest.raises(ValidationError, match="max_request_timeout_s"):
        Settings(classify_model=tmp_path, request_timeout_s=60, max_request_timeout_s=30)


def test_an_empty_api_key_means_no_key(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBERTA_API_KEY", "")
    assert Settings(classify_model=tmp_path).api_key is None


def test_a_queue_smaller_than_one_request_is_refused(tmp_path):
    # Requests are queued whole: a 16-input request could never fit an 8-sequence queue (429 forever).
    with pytest.raises(ValidationError, match=r"max_queue \(8\) must be at least max_inputs \(64\)"):
        Settings(classify_model=tmp_path, max_queue=8)
    assert Settings(classify_model=tmp_path, max_queue=8, max_inputs=8).max_queue == 8


def test_an_empty_folder_setting_is_unset_not_the_working_directory(tmp_path):
    # compose writes `ROBERTA_MODEL_REPOSITORY=` for a variable nobody set
    settings = Settings(model_repository="", models="", classify_model=tmp_path, fill_mask_model="")
    assert (settings.model_repository, settings.models, settings.fill_mask_model) == (None, None, None)
    with pytest.raises(ValidationError, match="name a model"):
        Settings(model_repository="", classify_model="")


def test_a_pool_of_processes_needs_a_named_port(tmp_path):
    # Each process binds the port itself: with 0 each would get a port of its own.
    with pytest.raises(ValidationError, match="name the port"):
        Settings(classify_model=tmp_path, processes=2, port=0)
    assert Settings(classify_model=tmp_path, processes=2, port=8123).processes == 2


def test_a_misspelt_variable_is_named_with_the_closest_setting_and_a_right_one_is_not():
    from app.settings import unknown_variables

    lines = unknown_variables({"ROBERTA_MAX_BACH_SIZE": "8", "ROBERTA_MAX_QUEUE": "64", "ROBERTA_NOTHING_LIKE_IT": "1",
                               "HOME": "/root"})
    assert lines == ["ROBERTA_MAX_BACH_SIZE is not a setting and is ignored; did you mean ROBERTA_MAX_BATCH_SIZE?",
                     "ROBERTA_NOTHING_LIKE_IT is not a setting and is ignored; python -m app --help lists the settings"]


def test_python_m_app_warns_of_a_misspelt_variable_at_start(exported_classifier):
    from bench.servers import free_port
    from server import ServerProcess

    with ServerProcess("--classify-model", str(exported_classifier), port=free_port(),
                       env={"ROBERTA_MAX_BACH_SIZE": "8"}) as server:
        pass
    assert "ROBERTA_MAX_BACH_SIZE is not a setting and is ignored; did you mean ROBERTA_MAX_BATCH_SIZE?" in server.output
