"""The engine: tokenizing off the event loop, the queue that cuts batches, ONNX Runtime that runs them."""
