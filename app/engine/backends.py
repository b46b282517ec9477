"""Which engine runs a model: ONNX Runtime or OpenVINO, by the settings, the folder and what the machine offers."""

from __future__ import annotations

from app.engine import onnx_runtime, openvino_runtime
from app.engine.engine import Engine, EngineConfig
from app.serving.model_folder import ModelFolder, ModelFolderError


def choose_backend(requested: str, *, openvino_installed: bool, bf16: bool, cuda_in_use: bool) -> str:
    """auto: OpenVINO where it is installed, the CPU says it computes in bf16 (AMX, AVX-512 BF16) and no GPU runs
    the model; else ONNX Runtime. A named backend is taken as named (open_engine refuses what it cannot do)."""
    if requested != "auto":
        return requested
    return "openvino" if openvino_installed and bf16 and not cuda_in_use else "onnxruntime"


def open_engine(folder: ModelFolder, config: EngineConfig, name: str) -> Engine:
    """The model on the engine the settings ask for (see choose_backend), or one line saying why it cannot run."""
    if config.backend == "openvino" and not openvino_runtime.installed():
        raise ModelFolderError("ROBERTA_BACKEND=openvino but OpenVINO is not installed; pip install '.[openvino]'")
    if config.backend != "openvino" and onnx_runtime.cuda_wanted(config):
        cuda_engine = onnx_runtime.OnnxRuntimeEngine(folder, config, name)
        if cuda_engine.device == "cuda" or config.backend == "onnxruntime":
            return cuda_engine
        cuda_engine.close()  # onnxruntime-gpu without a GPU: the CPU's engine is chosen below
    # Providers are ONNX Runtime's: naming them (ROBERTA_PROVIDERS) asks for ONNX Runtime.
    if config.backend == "auto" and (config.providers_chosen or not openvino_runtime.serves(folder, config)):
        backend = "onnxruntime"
    else:
        openvino = openvino_runtime.installed()
        backend = choose_backend(config.backend, openvino_installed=openvino,
                                 bf16=openvino and openvino_runtime.bf16_supported(), cuda_in_use=False)
    if backend == "openvino":
        return openvino_runtime.OpenVinoEngine(folder, config, name)
    return onnx_runtime.OnnxRuntimeEngine(folder, config, name)
