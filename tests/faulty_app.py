"""`python -m app`, except that ONNX Runtime's `run` raises while the file named by FAULT_FLAG exists.

Fault injection from outside the product: the service code is the shipped code, and
the failure comes from where real ones do, the inference session.
"""

import os
import sys
from pathlib import Path

import onnxruntime

FLAG = Path(os.environ["FAULT_FLAG"])
_run = onnxruntime.InferenceSession.run


def failing_run(self, *args, **kwargs):
    if FLAG.exists():
        raise RuntimeError(f"injected fault reading /opt/secret/{FLAG.name}/model.onnx")
    return _run(self, *args, **kwargs)


onnxruntime.InferenceSession.run = failing_run

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app.__main__ import main

    main()
