"""The inference service: HTTP -> tokenizer -> batcher -> ONNX Runtime -> postprocess."""
