"""The inference service: HTTP -> tokenizer -> batcher -> ONNX Runtime -> postprocess."""

__version__ = "0.5.0"
