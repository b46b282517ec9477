"""The inference service: HTTP -> tokenizer -> batcher -> ONNX Runtime -> postprocess."""

__version__ = "0.3.0"
