"""The engines side by side: which one `auto` takes, what each precision promises, and OpenVINO's own choices."""

from __future__ import annotations

import asyncio
import importlib.util

import numpy as np
import pytest

from app.engine import backends, openvino_runtime
from app.engine.backends import choose_backend, open_engine
from app.engine.batcher import right_pad
from app.engine.engine import EngineConfig
from app.engine.tokenize import TextEncoder
from app.serving.model_folder import ModelFolderError, load_model_folder
from conftest import REPO

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO is not installed")

TEXTS = [
    "the film was good.",
    "this movie is awful, sadly, and far too long for what it has to say about anything at all.",
    "a",
    "her voice felt moving and I loved it from start to finish.",
    "not bad",
    "an unremarkable, forgettable and rather dull evening at the cinema",
]


def test_auto_takes_openvino_only_installed_on_a_bf16_cpu_and_without_a_gpu():
    assert choose_backend("auto", openvino_installed=True, bf16=True, cuda_in_use=False) == "openvino"
    assert choose_backend("auto", openvino_installed=True, bf16=False, cuda_in_use=False) == "onnxruntime"
    assert choose_backend("auto", openvino_installed=False, bf16=True, cuda_in_use=False) == "onnxruntime"
    assert choose_backend("auto", openvino_installed=True, bf16=True, cuda_in_use=True) == "onnxruntime"
    assert choose_backend("openvino", openvino_installed=True, bf16=False, cuda_in_use=False) == "openvino"


@needs_openvino
def test_a_cpu_without_bf16_serves_with_onnx_runtime_in_fp32_as_before(exported_classifier, monkeypatch):
    monkeypatch.setattr(openvino_runtime, "bf16_supported", lambda: False)
    engine = open_engine(load_model_folder(exported_classifier), EngineConfig(), "cls")
    try:
        assert (engine.backend, engine.precision, engine.device) == ("onnxruntime", "fp32", "cpu")
    finally:
        engine.close()


@needs_openvino
def test_a_cpu_with_bf16_serves_with_openvino_in_bf16(exported_classifier, monkeypatch):
    monkeypatch.setattr(openvino_runtime, "bf16_supported", lambda: True)
    engine = open_engine(load_model_folder(exported_classifier), EngineConfig(), "cls")
    try:
        assert engine.info() | {"concurrent_runs": 0} == {
            "backend": "openvino", "precision": "bf16", "provider": "cpu", "providers": ["cpu"], "file": "model.onnx",
            "execution": "padded", "concurrent_runs": 0, "intra_op_threads": engine.threads, "solo_session": False,
        }
    finally:
        engine.close()


@needs_openvino
@pytest.mark.parametrize("config", [
    EngineConfig(precision="int8"),  # the folder has ONNX Runtime's INT8 only
    EngineConfig(precision="fp32", execution="packed"),  # the padding-free graph is ONNX Runtime's
    EngineConfig(precision="fp32", providers=("cpu",), providers_chosen=True),  # providers are ONNX Runtime's
], ids=["int8-not-exported-for-openvino", "packed", "providers-named"])
def test_auto_keeps_onnx_runtime_for_what_openvino_cannot_serve(tiny_classifier, tmp_path_factory, monkeypatch, config):
    from export.build import ExportOptions, export_model

    monkeypatch.setattr(openvino_runtime, "bf16_supported", lambda: True)
    path = tmp_path_factory.getbasetemp() / "cls-int8-packed"
    if not path.exists():
        export_model(ExportOptions(model=str(tiny_classifier), output=path, quantize="int8", packed=True), log=lambda _: None)
    folder = load_model_folder(path)
    assert "int8" not in folder.openvino_files and "fp32" in folder.packed_files
    engine = open_engine(folder, config, "cls")
    try:
        assert (engine.backend, engine.precision) == ("onnxruntime", config.precision)
    finally:
        engine.close()
    otherwise = open_engine(folder, EngineConfig(precision="fp32"), "cls")
    try:
        assert otherwise.backend == "openvino"
    finally:
        otherwise.close()


@needs_openvino
@pytest.mark.parametrize("precision, says", [
    ("int8", "re-export with --openvino-int8"),
    ("fp16", "fp16 runs on ONNX Runtime's CUDA provider"),
])
def test_openvino_named_refuses_what_it_cannot_serve_in_one_line(exported_classifier, precision, says):
    with pytest.raises(ModelFolderError, match=says):
        open_engine(load_model_folder(exported_classifier), EngineConfig(backend="openvino", precision=precision), "cls")


def test_openvino_named_but_not_installed_says_how_to_install_it(exported_classifier, monkeypatch):
    monkeypatch.setattr(backends.openvino_runtime, "installed", lambda: False)
    with pytest.raises(ModelFolderError, match=r"pip install '\.\[openvino\]'"):
        open_engine(load_model_folder(exported_classifier), EngineConfig(backend="openvino"), "cls")


def _logits_alone_and_with_batchmates(engine, encoder, rng) -> float:
    """The largest difference between a text's logits run alone and run in batches of other texts around it."""
    ids = [e.ids for e in encoder.encode(TEXTS)]

    async def run(group):
        input_ids, mask = right_pad(group, encoder.pad_id)
        return (await engine.run(input_ids, mask))["logits"]

    async def main():
        worst = 0.0
        for index, text_ids in enumerate(ids):
            alone = (await run([text_ids]))[0]
            for _ in range(4):
                others = [ids[j] for j in rng.choice(len(ids), size=int(rng.integers(1, 12)))]
                at = int(rng.integers(0, len(others) + 1))
                rows = await run(others[:at] + [text_ids] + others[at:])
                worst = max(worst, float(np.abs(rows[at] - alone).max()))
        return worst

    return asyncio.run(main())


def _default_engines(folder_path):
    """Every engine at its default precision on this folder, as the service would open it."""
    folder = load_model_folder(folder_path)
    configs = [EngineConfig(backend="onnxruntime")]
    if importlib.util.find_spec("openvino") is not None:
        configs.append(EngineConfig(backend="openvino"))
    return folder, configs


def test_at_every_engines_default_precision_an_answer_does_not_depend_on_its_batchmates(exported_openvino_int8):
    folder, configs = _default_engines(exported_openvino_int8)
    encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    seen = []
    for config in configs:
        engine = open_engine(folder, config, "cls")
        try:
            seen.append((engine.backend, engine.precision))
            assert _logits_alone_and_with_batchmates(engine, encoder, np.random.default_rng(0)) <= 1e-5, seen[-1]
        finally:
            engine.close()
    if len(configs) == 2:  # OpenVINO's default here is the calibrated INT8 the folder holds
        assert seen == [("onnxruntime", "fp32"), ("openvino", "int8")]


@needs_openvino
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_openvino_bf16_and_fp32_do_not_depend_on_batchmates_either(exported_classifier, precision):
    if precision == "bf16" and not openvino_runtime.bf16_supported():
        pytest.skip("this CPU does not compute in bf16")
    folder = load_model_folder(exported_classifier)
    encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    engine = open_engine(folder, EngineConfig(backend="openvino", precision=precision), "cls")
    try:
        assert _logits_alone_and_with_batchmates(engine, encoder, np.random.default_rng(1)) <= 1e-5
    finally:
        engine.close()


def test_onnx_runtimes_dynamic_int8_is_the_precision_whose_answers_move_with_their_batchmates(exported_classifier):
    # Why it is only served when named: its activation scales come from the whole batch.
    folder = load_model_folder(exported_classifier)
    encoder = TextEncoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    engine = open_engine(folder, EngineConfig(backend="onnxruntime", precision="int8", execution="padded"), "cls")
    try:
        assert _logits_alone_and_with_batchmates(engine, encoder, np.random.default_rng(0)) > 1e-4
    finally:
        engine.close()


@needs_openvino
@pytest.mark.slow
def test_on_sst2_dev_bf16_agrees_with_fp32_on_the_embedded_classifier(default_exports):
    from app.engine.tokenize import TextEncoder as Encoder

    if not openvino_runtime.bf16_supported():
        pytest.skip("this CPU does not compute in bf16")
    dev = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
    if not dev.is_file():
        pytest.skip("../shared/data is not beside the checkout")
    texts = [row.rsplit("\t", 1)[0].strip() for row in dev.read_text(encoding="utf-8").splitlines()[1:] if row.strip()]
    folder = load_model_folder(default_exports / "roberta-mini-sst2")
    encoder = Encoder(folder.tokenizer_file, folder.max_seq_len, folder.tokenizer_config)
    ids = sorted((e.ids for e in encoder.encode(texts)), key=len)
    logits = {}
    for precision in ("fp32", "bf16"):
        engine = open_engine(folder, EngineConfig(backend="openvino" if precision == "bf16" else "onnxruntime",
                                                  precision=precision), "cls")

        async def every_batch(engine=engine):
            rows = [(await engine.run(*right_pad(ids[at : at + 32], encoder.pad_id)))["logits"]
                    for at in range(0, len(ids), 32)]
            return np.concatenate(rows)

        try:
            logits[precision] = asyncio.run(every_batch())
        finally:
            engine.close()
    agreement = float((logits["fp32"].argmax(-1) == logits["bf16"].argmax(-1)).mean())
    print(f"bf16 against fp32 on SST-2 dev: top-1 agreement {agreement:.4f}, "
          f"largest logit difference {np.abs(logits['fp32'] - logits['bf16']).max():.3g}")
    assert agreement >= 0.995
