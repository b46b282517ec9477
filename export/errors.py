"""Everything export can refuse, each a one-line message that says what to do.

    ExportError
    ├── SourceNotFound        local folder missing, or not a checkpoint
    ├── HubUnreachable        a hub id was given and the hub cannot be reached
    ├── UnsupportedModel      not a RoBERTa-family checkpoint
    ├── TaskMismatch          --task disagrees with the checkpoint's head
    ├── OutputExists          output folder present and --force not given (or unsafe to replace)
    ├── BadOption             an option value that cannot work with this checkpoint
    └── VerificationFailed    ONNX does not match PyTorch within tolerance
"""


class ExportError(Exception):
    """Base class; the CLI prints `error: <message>` and exits non-zero."""


class SourceNotFound(ExportError):
    pass


class HubUnreachable(ExportError):
    pass


class UnsupportedModel(ExportError):
    pass


class TaskMismatch(ExportError):
    pass


class OutputExists(ExportError):
    pass


class BadOption(ExportError):
    pass


class VerificationFailed(ExportError):
    pass
