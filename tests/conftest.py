from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# The engines every task's parity tests run on. OpenVINO is an optional install (the openvino extra, which the test
# command installs): where it is missing its half is skipped.
BACKENDS = [
    pytest.param("onnxruntime"),
    pytest.param("openvino", marks=pytest.mark.skipif(
        importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed (the openvino extra)")),
]


@pytest.fixture(scope="session")
def default_exports(tmp_path_factory) -> Path:
    """The two embedded models (models/), exported as scripts/serve-default.sh exports them: fp32 and INT8."""
    from export.build import ExportOptions, export_model

    root = tmp_path_factory.mktemp("default")
    for name in ("roberta-mini-sst2", "roberta-mini-mlm"):
        export_model(ExportOptions(model=str(REPO / "models" / name), output=root / name, quantize="int8"), log=lambda _: None)
    return root


def _export(tmp_path_factory, checkpoint: Path, name: str, **options) -> Path:
    from export.build import ExportOptions, export_model

    out = tmp_path_factory.mktemp("onnx") / name
    export_model(ExportOptions(model=str(checkpoint), output=out, **options), log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return tiny_models.build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_models.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "cls", "text-classification", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_models.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "mlm", "fill-mask", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_ner(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_models.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "ner", "token-classification", tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_nli(tmp_path_factory, tiny_tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "nli"
    return tiny_models.build_checkpoint(folder, "text-classification", tiny_tokenizer, labels=tiny_models.NLI_LABELS, seed=1)


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory, tiny_tokenizer) -> Path:
    """A sentence-transformers folder (mean pooling, Normalize, two prompts)."""
    return tiny_models.build_sentence_transformer(tmp_path_factory.mktemp("ckpt") / "embedder", tiny_tokenizer, seed=2)


@pytest.fixture(scope="session")
def tiny_reranker(tmp_path_factory, tiny_tokenizer) -> Path:
    """A cross-encoder: a text classifier of one label, as sentence-transformers' CrossEncoder saves one."""
    folder = tmp_path_factory.mktemp("ckpt") / "reranker"
    return tiny_models.build_checkpoint(folder, "text-classification", tiny_tokenizer, num_labels=1, seed=3)


@pytest.fixture(scope="session")
def tiny_qa(tmp_path_factory, tiny_tokenizer) -> Path:
    return tiny_models.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "qa", "question-answering", tiny_tokenizer, seed=5)


@pytest.fixture(scope="session")
def exported_qa(tmp_path_factory, tiny_qa) -> Path:
    return _export(tmp_path_factory, tiny_qa, "qa", quantize="int8")


@pytest.fixture(scope="session")
def exported_embedder(tmp_path_factory, tiny_embedder) -> Path:
    return _export(tmp_path_factory, tiny_embedder, "embedder", quantize="int8")


@pytest.fixture(scope="session")
def exported_reranker(tmp_path_factory, tiny_reranker) -> Path:
    return _export(tmp_path_factory, tiny_reranker, "reranker")


@pytest.fixture(scope="session")
def exported_classifier(tmp_path_factory, tiny_classifier) -> Path:
    return _export(tmp_path_factory, tiny_classifier, "cls", quantize="int8")


@pytest.fixture(scope="session")
def exported_mlm(tmp_path_factory, tiny_mlm) -> Path:
    return _export(tmp_path_factory, tiny_mlm, "mlm", quantize="int8")


@pytest.fixture(scope="session")
def exported_ner(tmp_path_factory, tiny_ner) -> Path:
    return _export(tmp_path_factory, tiny_ner, "ner", quantize="int8")


@pytest.fixture(scope="session")
def exported_nli(tmp_path_factory, tiny_nli) -> Path:
    return _export(tmp_path_factory, tiny_nli, "nli")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory, exported_classifier, exported_mlm, exported_ner, exported_nli) -> Path:
    """A repository folder of one export per task, as an operator lays one out (here as links to the exports)."""
    root = tmp_path_factory.mktemp("repository")
    for name, folder in {"sentiment": exported_classifier, "mlm": exported_mlm, "ner": exported_ner, "nli": exported_nli}.items():
        (root / name).symlink_to(folder, target_is_directory=True)
    (root / "notes").mkdir()  # not an export: left alone
    (root / ".ner.partial-x").mkdir()  # an export in progress: hidden, left alone
    return root


CALIBRATION_TEXTS = [
    "the film was good.", "a dull, slow and forgettable evening", "I loved every minute of it",
    "the plot made no sense at all", "Paris in the spring", "what a waste of a fine cast",
    "an honest, moving story", "not bad, not great", "the acting was brilliant but the plot felt slow", "meh",
] * 4


@pytest.fixture(scope="session")
def calibration_file(tmp_path_factory) -> Path:
    """Calibration texts for OpenVINO's INT8 (`--openvino-int8`): a TSV of text<TAB>label, as --eval-file takes."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{text}\t{i % 2}\n" for i, text in enumerate(CALIBRATION_TEXTS)))
    return path


@pytest.fixture(scope="session")
def exported_openvino_int8(tmp_path_factory, tiny_classifier, calibration_file) -> Path:
    """The tiny classifier with OpenVINO's calibrated INT8 beside its fp32 (where OpenVINO is installed)."""
    openvino = importlib.util.find_spec("openvino") is not None
    return _export(tmp_path_factory, tiny_classifier, "cls-ov", openvino_int8=calibration_file if openvino else None)
