"""PyTorch checkpoint -> ONNX graphs: fp32 export, transformer fusions, INT8, FP16.

Each function reads one file and writes another, so the pipeline can verify a file
before anything is derived from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

logging.getLogger("optimum").setLevel(logging.ERROR)


def export_fp32(checkpoint: Path, task: str, folder: Path, opset: int | None) -> Path:
    """optimum's exporter: dynamic batch and sequence axes, tied MLM weights stored once."""
    from optimum.exporters.onnx import main_export

    main_export(
        str(checkpoint),
        output=str(folder),
        task=task,
        opset=opset,
        device="cpu",
        do_validation=False,  # we verify ourselves, against the exact probe batch we record
        library_name="transformers",
        local_files_only=True,
    )
    return folder / "model.onnx"


def optimize(source: Path, target: Path, config: dict, *, for_gpu: bool = False):
    """ONNX Runtime's offline transformer fusions (Attention, SkipLayerNorm, BiasGelu)."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(source),
        model_type="bert",  # the RoBERTa encoder has BERT's graph pattern
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        use_gpu=for_gpu,
    )
    model.save_model_to_file(str(target))
    return target


def quantize_int8(source: Path, target: Path, *, per_channel: bool) -> Path:
    """Dynamic INT8 for the CPU: weights quantized offline, activations at run time.

    Per-channel scales keep each output row's own range, which matters for the
    vocabulary projection of a fill-mask head and costs nothing at run time.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # Fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference; their tensors are fp32.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target


def convert_fp16(source: Path, target: Path, config: dict) -> Path:
    """FP16 weights and activations for the CUDA provider; inputs and logits stay int64/fp32."""
    from onnxruntime.transformers.optimizer import optimize_model

    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=int(config["num_attention_heads"]),
        hidden_size=int(config["hidden_size"]),
        use_gpu=True,
    )
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(target))
    return target


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
