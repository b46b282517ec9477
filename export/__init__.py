"""Turn a Hugging Face RoBERTa-family checkpoint into a verified ONNX model folder.

Imports nothing from `app`: the service only reads the folder this package writes.
"""
