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


def export_fill_mask_fp32(checkpoint: Path, target: Path, opset: int | None) -> Path:
    """The masked-LM graph that computes vocabulary logits only at the positions it is given (see fill_mask_graph)."""
    from export.fill_mask_graph import DEFAULT_OPSET, export_head_at_positions

    return export_head_at_positions(checkpoint, target, opset or DEFAULT_OPSET)


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

    Per-channel scales keep each output row's own range and cost nothing at run time. A
    fill-mask head's vocabulary projection, tied to the embeddings, stays fp32 (see
    _untie_gemm_weights): it runs on the mask rows only.
    """
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(source))
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        if _untie_gemm_weights(model):
            source = Path(scratch) / source.name
            onnx.save(model, str(source))
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            # Fused contrib ops (Attention, SkipLayerNorm) defeat ONNX shape inference; their tensors are fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return target


def openvino_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


def quantize_openvino_int8(source: Path, target: Path, calibration: list[dict]) -> Path:
    """OpenVINO's static INT8 by NNCF's post-training quantization: activation scales calibrated once on
    `calibration` (feeds of one sequence each), so a run's answer does not depend on its batchmates. NNCF's
    transformer preset keeps the operators that INT8 would hurt (softmax, layer norms) in floating point.

    Writes `target` (the IR's .xml) and its weights beside it (.bin).
    """
    import nncf
    import openvino

    logging.getLogger("nncf").setLevel(logging.ERROR)
    model = openvino.Core().read_model(str(source))
    quantized = nncf.quantize(
        model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration)
    )
    openvino.save_model(quantized, str(target))
    return target


def _untie_gemm_weights(model) -> bool:
    """Feed a Gemm whose weight another node also reads through a Transpose node; True if any was found.

    The fill-mask decoder is a Gemm (transB=1) on the word embeddings that the embedding Gather
    reads too. ONNX Runtime's quantizer turns such a Gemm into a MatMul by transposing the weight in
    place, under the name the Gather then reads: the INT8 graph would not load. Behind a Transpose
    the decoder stays fp32, which costs little on mask rows only, and the embeddings are stored once.
    """
    import onnx

    initializers = {tensor.name for tensor in model.graph.initializer}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input):
            readers[name] = readers.get(name, 0) + 1
    nodes = []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type == "Gemm" and len(node.input) > 1 else None
        if weight in initializers and readers[weight] > 1:
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if attributes.get("transB", 0) == 1:
                transposed = f"{weight}_transposed_for_{node.name}"
                nodes.append(onnx.helper.make_node("Transpose", [weight], [transposed], name=f"{node.name}_weight_transpose"))
                node.input[1] = transposed
                for attribute in node.attribute:
                    if attribute.name == "transB":
                        attribute.i = 0
        nodes.append(node)
    if len(nodes) == len(model.graph.node):
        return False
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return True


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


def convert_fp16_plain(source: Path, target: Path) -> Path:
    """FP16 without the BERT fusions, whose patterns (2-D input_ids, a padded mask) the packed graph does not have."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return target


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def input_names(path: Path) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [node.name for node in model.graph.input]
