"""Recompute every figure in models/README.md: export both embedded models (fp32 + INT8, reused when up to
date), SST-2 dev accuracy of PyTorch and of each ONNX file, and top-5 fill-mask answers for the probe sentences.

    python models/evaluate.py          # prints the card's tables, writes models/card_figures.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEV = REPO.parent / "shared" / "data" / "sst2" / "dev.tsv"
PROBES = (
    "She opened the <mask> and walked in.",
    "The capital of France is <mask>.",
    "He drank a cup of <mask> before breakfast.",
    "It was a dark and stormy <mask>.",
    "This movie was absolutely <mask>, I loved every minute.",
)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from export.build import ExportOptions, export_model

    figures: dict = {"sst2_dev": {}, "fill_mask": {}, "exports": {}}
    for name in ("roberta-mini-sst2", "roberta-mini-mlm"):
        options = ExportOptions(model=str(HERE / name), output=REPO / "build" / "onnx" / name, quantize="int8", reuse=True)
        manifest = export_model(options)
        figures["exports"][name] = {
            variant: {"size_mb": round(entry["size_bytes"] / 1e6, 1), **manifest["verification"][variant]}
            for variant, entry in manifest["files"].items()
        }
    # Accuracy on the same ONNX files the service loads, through the exporter's own evaluation path.
    evaluated = export_model(
        ExportOptions(model=str(HERE / "roberta-mini-sst2"), output=REPO / "build" / "eval" / "roberta-mini-sst2",
                      quantize="int8", eval_file=DEV, force=True),
    )
    figures["sst2_dev"] = evaluated["evaluation"]

    from transformers import pipeline

    fill = pipeline("fill-mask", model=str(HERE / "roberta-mini-mlm"))
    for probe in PROBES:
        figures["fill_mask"][probe] = [(a["token_str"].strip(), round(a["score"], 3)) for a in fill(probe, top_k=5)]

    (HERE / "card_figures.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    accuracy = figures["sst2_dev"]["accuracy"]
    print(f"\nSST-2 dev accuracy ({figures['sst2_dev']['rows']} sentences)\n")
    print("| PyTorch fp32 | ONNX fp32 | ONNX INT8 |\n| --- | --- | --- |")
    print(f"| {accuracy['pytorch']:.2%} | {accuracy['fp32']:.2%} | {accuracy['int8']:.2%} |")
    print("\nFill-mask top-5 (PyTorch)\n\n| probe | top-5 |\n| --- | --- |")
    for probe, answers in figures["fill_mask"].items():
        print(f"| {probe} | {', '.join(f'{w} ({s:.2f})' for w, s in answers)} |")
    print("\nExported files\n\n| model | variant | MB | max abs logit diff | top-1 agreement |\n| --- | --- | --- | --- | --- |")
    for name, variants in figures["exports"].items():
        for variant, v in variants.items():
            print(f"| {name} | {variant} | {v['size_mb']} | {v['max_abs_diff']:.2e} | {v['top1_agreement']:.1%} |")


if __name__ == "__main__":
    main()
