"""Launch infinity-emb 0.0.78 (`v2`, optimum/ONNX engine, CPU) on a local ONNX model folder.

Works around two infinity bugs. (1) For a local folder, `get_onnx_files()` in
infinity_emb/transformer/utils_optimum.py returns the ONNX file's absolute path, which
`OptimumClassifier.__init__` (transformer/classifier/optimum.py) passes as `file_name=` to optimum's
`ORTModel.from_pretrained`, which only matches bare names ("FileNotFoundError: Could not find any
ONNX files with target file name /abs/.../model.onnx"); the shim returns the bare `--onnx-file`
(default: fp32 model.onnx, so infinity no longer guesses between it and model.int8.onnx).
(2) That classifier's transformers pipeline does not truncate, so an input past the position limit
(510 tokens for roberta-base-random, 128 for roberta-mini) raises in ONNX Runtime, kills the
`_core_batch` thread (inference/batch_handler.py) and hangs every later /classify while /health stays
200, and the 514-token startup warmup aborts startup; the shim truncates to that limit and turns the
warmup (which only logs timings) off.

The same bare-name fix is applied to its embedder (`/embeddings`, on a folder whose ONNX file outputs
`last_hidden_state`: infinity pools itself) and its reranker (`/rerank`, on a sequence classifier).

Usage (run with the infinity venv's interpreter):
    build/infinity-venv/bin/python bench/systems/infinity_shim.py --model <folder> --port 7997 [--batch-size 32]
Readiness: GET http://127.0.0.1:<port>/health returns 200 once the model is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="local ONNX model folder")
    ap.add_argument("--port", type=int, default=7997)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--batch-size", type=int, default=32, help="infinity max batch size (its default: 32)")
    ap.add_argument("--onnx-file", default="model.onnx", help="ONNX file inside --model to run")
    ap.add_argument("--served-model-name", default=None, help="default: the folder's name")
    ap.add_argument("--log-level", default="info")
    args, passthrough = ap.parse_known_args()  # anything else goes to `infinity_emb v2` as-is

    folder = Path(args.model).resolve()
    if not (folder / args.onnx_file).is_file():
        sys.exit(f"{folder / args.onnx_file} not found")

    # No hub access, no telemetry: must be set before infinity/transformers are imported.
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DO_NOT_TRACK"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("INFINITY_ANONYMOUS_USAGE_STATS", "0")

    from infinity_emb import cli
    from infinity_emb.log_handler import logger
    from infinity_emb.transformer import utils_optimum
    from infinity_emb.transformer.classifier import optimum as classifier_optimum
    from infinity_emb.transformer.crossencoder import optimum as crossencoder_optimum
    from infinity_emb.transformer.embedder import optimum as embedder_optimum

    def get_onnx_files(*, model_name_or_path, **_ignored) -> Path:
        # A relative name, as optimum's ORTModel._infer_file_path expects.
        return Path(args.onnx_file)

    def optimize_model(**kwargs):
        model = utils_optimum.optimize_model(**kwargs)
        logger.info(
            "shim: ONNX session file=%s providers=%s",
            getattr(model, "path", "?"),
            model.session.get_providers(),
        )
        return model

    def pipeline(**kwargs):
        config = kwargs["model"].config
        # RoBERTa position ids start after pad_token_id, so 512 positions hold 510 tokens.
        max_length = config.max_position_embeddings - config.pad_token_id - 1
        logger.info("shim: pipeline truncates inputs to %d tokens", max_length)
        return transformers_pipeline(**kwargs, truncation=True, max_length=max_length)

    # classifier/optimum.py did `from ..utils_optimum import get_onnx_files, optimize_model`
    # and `from transformers import pipeline`, so patch the names it looks up.
    transformers_pipeline = classifier_optimum.pipeline
    utils_optimum.get_onnx_files = get_onnx_files
    classifier_optimum.get_onnx_files = get_onnx_files
    embedder_optimum.get_onnx_files = get_onnx_files  # its embedder and reranker imported the name too
    crossencoder_optimum.get_onnx_files = get_onnx_files
    classifier_optimum.optimize_model = optimize_model
    classifier_optimum.pipeline = pipeline

    sys.argv = [
        "infinity_emb", "v2",
        "--model-id", str(folder),
        "--served-model-name", args.served_model_name or folder.name,
        "--engine", "optimum",
        "--device", "cpu",
        "--batch-size", str(args.batch_size),
        # Run the file as-is. Infinity's own optimizer would write *_optimized.onnx
        # into the model folder (an absolute model path replaces its cache prefix).
        "--onnx-disable-optimize",
        "--no-model-warmup",
        "--host", args.host,
        "--port", str(args.port),
        "--log-level", args.log_level,
        *passthrough,
    ]
    cli.cli()


if __name__ == "__main__":
    main()
