"""The export pipeline: resolve, convert, verify, write the manifest, publish atomically.

Everything is written into a hidden staging folder beside the output and renamed into
place only after fp32 verification passed, so a failed export never leaves a folder
that looks good.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from export import convert, verify
from export.embedding import POOLINGS, Embedding, read_embedding
from export.errors import BadOption, OutputExists, SourceNotFound, TaskMismatch, UnsupportedModel, VerificationFailed
from export.manifest import FORMAT_VERSION, MANIFEST_NAME, file_entry, tool_versions, write_manifest
from app.tasks.specs import EXPORTED
from export.source import (
    Checkpoint,
    check_supported,
    check_tokenizer,
    default_max_seq_len,
    file_sha256,
    fingerprint,
    resolve_checkpoint,
    resolve_task,
)

FILENAMES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
    # The padding-free graphs (export/packed_graph.py), one per precision exported.
    "packed-fp32": "model.packed.onnx",
    "packed-int8": "model.packed.int8.onnx",
    "packed-fp16": "model.packed.fp16.onnx",
    # OpenVINO's calibrated INT8 (--openvino-int8): the IR's .xml, its weights in the .bin beside it.
    "openvino-int8": "model.openvino-int8.xml",
}
CALIBRATION_TEXTS = 300  # the most calibration texts read: NNCF's default subset size


@dataclass(frozen=True)
class ExportOptions:
    model: str
    output: Path
    task: str | None = None
    quantize: str | None = None  # "int8"
    per_channel: bool = True
    fp16: bool = False
    packed: bool = False  # also the padding-free graphs
    optimize: bool = False
    opset: int | None = None
    max_seq_len: int | None = None
    atol: float = 1e-4
    eval_file: Path | None = None
    openvino_int8: Path | None = None  # calibration texts (TSV) for OpenVINO's static INT8
    pooling: str | None = None  # feature-extraction from a plain encoder: mean, cls, max
    normalize: bool = False  # feature-extraction from a plain encoder: unit-length vectors by default
    force: bool = False
    reuse: bool = False  # keep an existing export of the same source made with the same options
    revision: str | None = None

    def recipe(self) -> dict:
        """What, besides the source, decides the files: two exports with equal recipes are interchangeable."""
        return {
            "task": self.task,
            "quantize": self.quantize,
            "per_channel": self.per_channel,
            "fp16": self.fp16,
            "optimize": self.optimize,
            "opset": self.opset,
            "max_seq_len": self.max_seq_len,
            "atol": self.atol,
            "packed": self.packed,
            "pooling": self.pooling,
            "normalize": self.normalize,
            # the calibration texts decide the INT8 file: their sha256 (a missing file is refused later)
            "openvino_int8": None if self.openvino_int8 is None else (
                file_sha256(Path(self.openvino_int8)) if Path(self.openvino_int8).is_file() else str(self.openvino_int8)),
        }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def export_model(options: ExportOptions, log: Callable[[str], None] = _stderr) -> dict:
    """Run the whole export; returns the manifest written into `options.output`."""
    output = Path(options.output).expanduser().absolute()
    if options.quantize not in (None, "int8"):
        raise BadOption(f"--quantize {options.quantize} is not supported; use --quantize int8")
    checkpoint = resolve_checkpoint(options.model, options.revision)
    if options.reuse:
        existing = _reusable(output, checkpoint, options)
        if existing is not None:
            log(f"{output} is up to date (same source sha256 and options); nothing to do")
            return existing
    _check_output(output, options.force or options.reuse)
    check_supported(checkpoint)
    task = resolve_task(checkpoint, options.task)
    check_tokenizer(checkpoint)
    embedding = None
    if task == "feature-extraction":
        if options.pooling is not None and options.pooling not in POOLINGS:
            raise BadOption(f"--pooling {options.pooling} is not served; use one of {', '.join(POOLINGS)}")
        embedding = read_embedding(checkpoint.path, checkpoint.config, options.pooling, options.normalize)
    elif options.pooling is not None or options.normalize:
        raise BadOption("--pooling and --normalize are for --task feature-extraction (sentence embeddings)")
    max_seq_len = _max_seq_len(checkpoint, options.max_seq_len, embedding)
    if options.eval_file is not None:
        if task != "text-classification":
            raise BadOption("--eval-file measures classification accuracy; it needs --task text-classification")
        if not Path(options.eval_file).is_file():
            raise SourceNotFound(f"no such eval file: {options.eval_file}")
    if options.openvino_int8 is not None:
        if not Path(options.openvino_int8).is_file():
            raise SourceNotFound(f"no such calibration file: {options.openvino_int8}")
        if not convert.openvino_installed():
            raise BadOption("--openvino-int8 needs OpenVINO and NNCF: pip install '.[export,openvino]'")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.partial-"))
    try:
        manifest = _build(checkpoint, task, max_seq_len, options, staging, log, embedding)
        _publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {output}")
    return manifest


def _build(checkpoint: Checkpoint, task: str, max_seq_len: int, options: ExportOptions, staging: Path, log,
           embedding: Embedding | None) -> dict:
    timings: dict[str, float] = {}

    def step(name: str, fn, *args, **kwargs):
        log(f"{name} ...")
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 3)
        log(f"{name}: {timings[name]:.1f} s")
        return result

    model, tokenizer = step("load PyTorch checkpoint", _load_pytorch, checkpoint, task)
    config = model.config.to_dict()

    fp32 = staging / FILENAMES["fp32"]
    if task == "fill-mask":
        step("export fp32 ONNX", convert.export_fill_mask_fp32, checkpoint.path, fp32, options.opset)
    elif embedding is not None:
        from export.embedding_graph import PooledEncoder, export_pooled

        step("export fp32 ONNX", export_pooled, model, embedding.pooling, fp32, options.opset)
    else:
        step("export fp32 ONNX", convert.export_fp32, checkpoint.path, task, staging, options.opset)
    if options.optimize:
        fused = staging / "model.fused.onnx"
        step("fuse transformer ops", convert.optimize, fp32, fused, config)
        fused.replace(fp32)
    tokenizer.save_pretrained(str(staging))  # tokenizer.json and its configs, whatever the source shipped
    model.config.save_pretrained(str(staging))

    batch = verify.encode(tokenizer, verify.probe_texts(task, tokenizer.mask_token), max_seq_len, task)
    outputs = EXPORTED[task].outputs
    reference = verify.torch_runner(model if embedding is None else PooledEncoder(model, embedding.pooling), outputs)(batch)
    variants = {"fp32": fp32}
    results = {"fp32": step("verify fp32", _verify, fp32, batch, reference)}
    if results["fp32"]["max_abs_diff"] > options.atol or results["fp32"]["top1_agreement"] < 1.0:
        raise VerificationFailed(
            f"fp32 ONNX differs from PyTorch by {results['fp32']['max_abs_diff']:.3g} "
            f"(tolerance {options.atol:g}, top-1 agreement {results['fp32']['top1_agreement']:.0%}); "
            "try another --opset, or raise --atol if this difference is acceptable"
        )
    results["fp32"]["passed"] = True

    if options.quantize == "int8":
        variants["int8"] = step(
            "quantize INT8", convert.quantize_int8, fp32, staging / FILENAMES["int8"], per_channel=options.per_channel
        )
        results["int8"] = step("verify INT8", _verify, variants["int8"], batch, reference)
    if options.fp16:
        variants["fp16"] = step("convert FP16", convert.convert_fp16, fp32, staging / FILENAMES["fp16"], config)
        results["fp16"] = step("verify FP16", _verify, variants["fp16"], batch, reference)

    if options.openvino_int8 is not None:
        texts = verify.read_calibration_file(Path(options.openvino_int8), CALIBRATION_TEXTS)
        inputs = convert.input_names(fp32)
        calibration = [
            {name: value for name, value in verify.encode(tokenizer, [text], max_seq_len, task).items() if name in inputs}
            for text in texts
        ]
        variants["openvino-int8"] = step(
            f"quantize OpenVINO INT8 on {len(texts)} texts", convert.quantize_openvino_int8, fp32,
            staging / FILENAMES["openvino-int8"], calibration,
        )
        results["openvino-int8"] = step("verify OpenVINO INT8", _verify, variants["openvino-int8"], batch, reference)

    if options.packed and EXPORTED[task].packed:
        _build_packed(model, task, options, staging, batch, reference, variants, results, step, config)

    evaluation = None
    if options.eval_file is not None:
        evaluation = step("evaluate", _evaluate, options.eval_file, model, tokenizer, variants, config, max_seq_len)

    for leftover in staging.glob("*.onnx"):
        if leftover not in variants.values():
            leftover.unlink()
    manifest = {
        "task": task,
        "model_type": checkpoint.model_type,
        "architecture": (checkpoint.architectures or [type(model).__name__])[0],
        "source": {
            "model": checkpoint.source,
            "path": str(checkpoint.path),
            "revision": checkpoint.revision,
            "sha256": fingerprint(checkpoint.path),
        },
        "labels": _labels(config) if EXPORTED[task].labelled else None,
        "problem_type": config.get("problem_type"),
        "activation": _cross_encoder_activation(config),
        "embedding": None if embedding is None else embedding.as_dict(),
        "max_seq_len": max_seq_len,
        "opset": convert.opset_of(fp32),
        "inputs": convert.input_names(fp32),
        "optimized": options.optimize,
        "quantization": _quantization(options, variants),
        "files": {name: _file(path) for name, path in variants.items()},
        "verification": {"atol": options.atol, "probe_texts": len(batch["input_ids"]), **results},
        "evaluation": evaluation,
        "options": options.recipe(),
        "tools": tool_versions(),
        "timings_s": timings,
    }
    write_manifest(staging, manifest)
    _summarise(manifest, log)
    return manifest


def _quantization(options: ExportOptions, variants: dict[str, Path]) -> dict:
    recorded = {}
    if "int8" in variants:
        recorded["int8"] = {"weight_type": "QInt8", "per_channel": options.per_channel, "dynamic": True}
    if "openvino-int8" in variants:
        recorded["openvino-int8"] = {"tool": "nncf", "preset": "transformer", "dynamic": False,
                                     "calibration_file": Path(options.openvino_int8).name}
    return recorded


def _cross_encoder_activation(config: dict) -> str | None:
    """What sentence-transformers' CrossEncoder applies to a classifier's logits when its config names it (its
    default otherwise: sigmoid for one label, as the text-classification pipeline's rule too)."""
    named = (config.get("sentence_transformers") or {}).get("activation_fn") or config.get(
        "sbert_ce_default_activation_function")
    known = {"torch.nn.modules.activation.Sigmoid": "sigmoid", "torch.nn.modules.linear.Identity": "none"}
    return known.get(str(named)) if named else None


def _file(path: Path) -> dict:
    """A file's manifest entry; an OpenVINO IR's weights (.bin) beside it."""
    entry = {"path": path.name, **file_entry(path)}
    if path.suffix == ".xml":
        entry["weights"] = {"path": path.with_suffix(".bin").name, **file_entry(path.with_suffix(".bin"))}
    return entry


def _build_packed(model, task, options, staging, batch, reference, variants, results, step, config) -> None:
    """The padding-free graph of every precision exported, each held to the same gate as its padded twin."""
    from export.packed_graph import export_packed

    padding_idx = int(config.get("pad_token_id", 1))
    packed = staging / FILENAMES["packed-fp32"]
    variants["packed-fp32"] = step("export packed fp32 ONNX", export_packed, model, task, packed, options.opset)
    results["packed-fp32"] = step("verify packed fp32", _verify, packed, batch, reference, padding_idx)
    if results["packed-fp32"]["max_abs_diff"] > options.atol or results["packed-fp32"]["top1_agreement"] < 1.0:
        raise VerificationFailed(
            f"the packed fp32 graph differs from PyTorch by {results['packed-fp32']['max_abs_diff']:.3g} "
            f"(tolerance {options.atol:g}); export without --packed"
        )
    results["packed-fp32"]["passed"] = True
    if options.quantize == "int8":
        variants["packed-int8"] = step(
            "quantize packed INT8", convert.quantize_int8, packed, staging / FILENAMES["packed-int8"],
            per_channel=options.per_channel,
        )
        results["packed-int8"] = step("verify packed INT8", _verify, variants["packed-int8"], batch, reference, padding_idx)
    if options.fp16:
        variants["packed-fp16"] = step(
            "convert packed FP16", convert.convert_fp16_plain, packed, staging / FILENAMES["packed-fp16"]
        )
        results["packed-fp16"] = step("verify packed FP16", _verify, variants["packed-fp16"], batch, reference, padding_idx)


def _load_pytorch(checkpoint: Checkpoint, task: str):
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    model_class = getattr(transformers, EXPORTED[task].auto_class)
    # The embedding graph is traced from this model: eager attention traces to the MatMul/Softmax pattern that ONNX
    # Runtime's fusions recognise.
    traced = {"attn_implementation": "eager"} if task == "feature-extraction" else {}
    model, info = model_class.from_pretrained(str(checkpoint.path), output_loading_info=True, local_files_only=True,
                                              **traced)
    # An encoder saved without its pooler (sentence-transformers may drop it) is whole: the embedding graph does
    # not use the pooler.
    unused = ("position_ids", "pooler.dense.weight", "pooler.dense.bias") if task == "feature-extraction" else ("position_ids",)
    missing = [key for key in info["missing_keys"] if not key.endswith(unused)]
    if missing:
        raise TaskMismatch(
            f"the checkpoint has no trained weights for {', '.join(missing[:3])}: it was not trained for {task}; "
            "pass the --task its head was trained for"
        )
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint.path), use_fast=True, local_files_only=True)
    if not tokenizer.is_fast:
        raise UnsupportedModel("the service needs a fast tokenizer (tokenizer.json); this checkpoint has none")
    if task == "fill-mask" and tokenizer.mask_token is None:
        raise UnsupportedModel("fill-mask needs a tokenizer with a mask token; this one has none")
    return model, tokenizer


def _verify(path: Path, batch, reference: verify.Outputs, padding_idx: int = 1) -> dict:
    candidate = verify.runner_for(path, padding_idx, tuple(reference))(batch)
    return verify.compare_outputs(reference, candidate).as_dict()


def _evaluate(eval_file: Path, model, tokenizer, variants: dict[str, Path], config: dict, max_seq_len: int) -> dict:
    label2id = {name: int(idx) for name, idx in config["label2id"].items()}
    texts, labels = verify.read_eval_file(Path(eval_file), label2id)
    runners = {"pytorch": verify.torch_runner(model)}
    padding_idx = int(config.get("pad_token_id", 1))
    runners.update({name: verify.runner_for(path, padding_idx) for name, path in variants.items()})
    accuracy = {
        name: round(float((verify.predict(run, tokenizer, texts, max_seq_len) == labels).mean()), 6)
        for name, run in runners.items()
    }
    return {"file": Path(eval_file).name, "rows": len(texts), "accuracy": accuracy}


def _labels(config: dict) -> list[str]:
    id2label = {int(idx): name for idx, name in config["id2label"].items()}
    return [id2label[i] for i in range(len(id2label))]


def _max_seq_len(checkpoint: Checkpoint, requested: int | None, embedding: Embedding | None = None) -> int:
    limit = default_max_seq_len(checkpoint)
    if requested is None:
        # sentence-transformers cuts inputs at its own max_seq_length: its vectors are those of the cut text
        return min(limit, embedding.max_seq_length) if embedding is not None and embedding.max_seq_length else limit
    if not 1 <= requested <= limit:
        raise BadOption(f"--max-seq-len must be between 1 and {limit} for this checkpoint (got {requested})")
    return requested


def _reusable(output: Path, checkpoint: Checkpoint, options: ExportOptions) -> dict | None:
    try:
        manifest = json.loads((output / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files_present = all((output / entry["path"]).is_file() for entry in manifest.get("files", {}).values())
    same = (
        manifest.get("format_version") == FORMAT_VERSION  # another exporter's layout is rebuilt
        and manifest.get("options") == options.recipe()
        and manifest.get("source", {}).get("sha256") == fingerprint(checkpoint.path)
    )
    return manifest if same and files_present else None


def _check_output(output: Path, force: bool) -> None:
    if not output.exists():
        return
    if not force:
        raise OutputExists(f"{output} already exists; pass --force to replace it or choose another --output")
    is_export = output.is_dir() and ((output / MANIFEST_NAME).is_file() or not any(output.iterdir()))
    if not is_export:
        raise OutputExists(f"{output} exists and is not an export folder; --force only replaces exports, remove it yourself")


def _publish(staging: Path, output: Path) -> None:
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700
    if output.exists():
        retired = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old-"))
        output.replace(retired / output.name)
        staging.replace(output)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.replace(output)


def _summarise(manifest: dict, log) -> None:
    for name, result in manifest["verification"].items():
        if isinstance(result, dict):
            entry = manifest["files"][name]
            size = (entry["size_bytes"] + entry.get("weights", {}).get("size_bytes", 0)) / 1e6
            log(
                f"{name}: {size:.1f} MB, max |logit diff| {result['max_abs_diff']:.2e}, "
                f"top-1 agreement {result['top1_agreement']:.1%}"
            )
    if manifest["evaluation"]:
        accuracy = ", ".join(f"{k} {v:.2%}" for k, v in manifest["evaluation"]["accuracy"].items())
        log(f"accuracy on {manifest['evaluation']['file']}: {accuracy}")
