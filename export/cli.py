"""`python -m export MODEL --output DIR ...`: argument parsing and the one-line error contract."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from pathlib import Path

from export.build import ExportOptions, export_model
from export.errors import ExportError
from export.source import TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a Hugging Face RoBERTa-family checkpoint to a verified ONNX model folder.",
    )
    parser.add_argument("model", help="a local folder written by save_pretrained, or a hub id")
    parser.add_argument("--output", "-o", required=True, type=Path, help="folder to write (must not exist)")
    parser.add_argument("--task", choices=TASKS, help="default: read from the checkpoint's architectures")
    parser.add_argument("--quantize", choices=["int8"], help="also write model.int8.onnx (dynamic INT8, for CPU)")
    parser.add_argument(
        "--per-channel", action=argparse.BooleanOptionalAction, default=True, help="per-channel INT8 weight scales"
    )
    parser.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (for the CUDA provider)")
    parser.add_argument(
        "--packed", action="store_true",
        help="also write the padding-free graphs (model.packed*.onnx): token-wise work on real tokens only",
    )
    parser.add_argument("--optimize", action="store_true", help="apply ONNX Runtime transformer fusions")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's choice for the model)")
    parser.add_argument("--max-seq-len", type=int, help="longest input the service accepts (default: the model's)")
    parser.add_argument("--atol", type=float, default=1e-4, help="fp32 tolerance on logits (default 1e-4)")
    parser.add_argument("--eval-file", type=Path, help="TSV text<TAB>label: record accuracy of each variant")
    parser.add_argument(
        "--openvino-int8", type=Path, metavar="CALIBRATION_TSV",
        help="also write model.openvino-int8.xml/.bin: OpenVINO's static INT8, calibrated on the file's texts (one per "
        "row, or text<TAB>label; the first 300)",
    )
    parser.add_argument(
        "--pooling", choices=["mean", "cls", "max"],
        help="feature-extraction from a plain encoder (RobertaModel): how its tokens become one vector (a "
        "sentence-transformers folder says it itself)",
    )
    parser.add_argument(
        "--normalize", action="store_true",
        help="feature-extraction from a plain encoder: unit-length vectors unless a request asks otherwise",
    )
    parser.add_argument("--revision", help="hub revision (branch, tag or commit)")
    parser.add_argument("--force", action="store_true", help="replace an existing export folder")
    parser.add_argument(
        "--reuse", action="store_true", help="keep an up-to-date export (same source and options), else replace it"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="library warnings and tracebacks")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.verbose:
        warnings.filterwarnings("ignore")
        logging.disable(logging.ERROR)
    options = ExportOptions(
        model=args.model,
        output=args.output,
        task=args.task,
        quantize=args.quantize,
        per_channel=args.per_channel,
        fp16=args.fp16,
        packed=args.packed,
        optimize=args.optimize,
        opset=args.opset,
        max_seq_len=args.max_seq_len,
        atol=args.atol,
        eval_file=args.eval_file,
        openvino_int8=args.openvino_int8,
        pooling=args.pooling,
        normalize=args.normalize,
        force=args.force,
        reuse=args.reuse,
        revision=args.revision,
    )
    try:
        export_model(options)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written", file=sys.stderr)
        return 130
    except Exception as exc:  # a library failed in a way we do not classify
        if args.verbose:
            traceback.print_exc()
        print(f"error: export failed: {type(exc).__name__}: {exc} (rerun with --verbose for details)", file=sys.stderr)
        return 1
    return 0
