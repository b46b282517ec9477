"""The one place that reads configuration: ROBERTA_* environment variables, or the same names as CLI flags."""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.serving.logs import configure_logging

Precision = Literal["auto", "fp32", "bf16", "int8", "fp16"]
Provider = Literal["cuda", "cpu"]


class Settings(BaseSettings):
    """Every field is `ROBERTA_<NAME>` in the environment and `--<name>` (kebab case) on `python -m app`."""

    model_config = SettingsConfigDict(env_prefix="ROBERTA_", extra="ignore", frozen=True)

    model_repository: Path | None = Field(
        None, description="a folder of exports: every subfolder holding one is served, named by the subfolder"
    )
    models: str | None = Field(
        None, description="models by name: name=folder,name=folder (with or without a repository)"
    )
    classify_model: Path | None = Field(
        None, description="exported text-classification folder, named by its folder name; /classify's default model"
    )
    fill_mask_model: Path | None = Field(
        None, description="exported fill-mask folder, named by its folder name; /fill-mask's default model"
    )
    backend: Literal["auto", "onnxruntime", "openvino"] = Field(
        "auto",
        description="the engine that runs the models. auto: OpenVINO where it is installed (the openvino extra), the "
        "CPU computes in bf16 (AMX, AVX-512 BF16) and no GPU runs the model, it can serve what precision and "
        "execution ask, and providers (ONNX Runtime's) are not named; else ONNX Runtime",
    )
    precision: Precision = Field(
        "auto",
        description="auto: on OpenVINO the calibrated INT8 where the export has it (--openvino-int8), else bf16 where "
        "the CPU computes in it, else fp32; on ONNX Runtime fp16 on CUDA where the export has it, else fp32. "
        "ONNX Runtime's dynamic INT8 only when named: its answers move with their batchmates",
    )
    providers: Annotated[tuple[Provider, ...], NoDecode] = Field(
        ("cuda", "cpu"), description="execution providers in order of preference; the CPU is always the last fallback, without a warning where ONNX Runtime has no CUDA"
    )

    execution: Literal["auto", "padded", "packed"] = Field(
        "auto",
        description="auto: the padding-free graph (export --packed) for INT8 where the folder has it, else the padded "
        "one (docs/decisions/packed-graph.md); packed: the padding-free graph at any precision; padded: never",
    )

    max_batch_size: int = Field(32, ge=1, le=1024, description="sequences per batch")
    max_batch_tokens: int = Field(16384, ge=1, description="padded tokens per batch (batch size x longest sequence); a longer sequence runs alone")
    max_wait_ms: float = Field(
        0.0, ge=0, le=10_000, description="how long an idle model waits for company for a new request; batches form anyway while it is busy"
    )
    max_queue: int = Field(1024, ge=1, description="sequences waiting per model; beyond it requests get 429. At least max_inputs: a request is queued whole")
    max_inputs: int = Field(
        64, ge=1, description="sequences per request (texts; zero-shot: texts x labels; token classification with a stride "
        "and question answering: windows; rerank: documents); beyond it 413. Fill-mask answers (texts x masks x top_k) are held to 32 per input allowed"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="deadline of a request from arrival to answer")
    max_request_timeout_s: float = Field(
        120.0, gt=0, description="the longest deadline a request may ask for with the X-Request-Timeout header"
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="request bodies larger than this get 413 before they are read; also the most "
        "characters of text one request hands the tokenizer (zero-shot hypotheses included)"
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this of its first byte (else 408)")
    body_timeout_s: float = Field(30.0, gt=0, description="a request's body must arrive within this of its headers (else 408)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="an idle connection, a new one included, is closed after this")

    concurrent_runs: int = Field(
        0, ge=0, le=256,
        description="batches of one model that run at once, side by side on one session (0: on a CPU one per core, "
        "each on one thread, unless intra_op_threads is set; on a GPU one). Each may hold max_batch_tokens",
    )
    intra_op_threads: int = Field(
        0, ge=0, description="threads inside each run, ONNX Runtime's or an OpenVINO stream's (0: the cores shared out "
        "among the concurrent runs)"
    )
    onnx_scheduler: Literal["normal", "idle"] = Field(
        "normal",
        description="idle: run the models' ONNX Runtime threads under Linux's SCHED_IDLE, so that the event loop and "
        "the tokenizer take a core the moment they wake; they then get only the CPU that no normal thread of the "
        "service's cgroup wants (only where the service has its cgroup to itself: a container, a pod)",
    )

    api_key: SecretStr | None = Field(
        None, description="when set, the inference endpoints need `Authorization: Bearer <key>` (compared in constant "
        "time). Whitespace around it is dropped; a blank key, or one that is not printable ASCII, is refused at start-up"
    )
    protect_health_and_metrics: bool = Field(
        False, description="with an API key set, /healthz, /readyz, /info, /metrics and the docs pages need it too"
    )
    docs: bool = Field(True, description="serve /docs, /redoc and /openapi.json (assets from a pinned package, no CDN)")

    shutdown_delay_s: float = Field(
        0.0, ge=0, description="on SIGTERM, keep serving this long (readiness already 503) so load balancers can stop routing"
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="on SIGTERM, after the delay: the bound on everything left (accepted requests, answers "
        "being written, uploads arriving); then the connections close and the process exits"
    )

    processes: int = Field(
        1, ge=1, le=64,
        description="copies of the service on one port (python -m app), each with its share of the cores and its own "
        "copy of the models, dealt connections by the kernel (SO_REUSEPORT)",
    )
    host: str = Field("127.0.0.1", description="address to bind (python -m app)")
    port: int = Field(8000, ge=0, le=65535, description="port to bind (python -m app)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least severe log line written (info: one access line per request)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="json: every log line, uvicorn's too, one JSON object with its request's request_id, "
        "trace_id and span_id"
    )

    @field_validator("model_repository", "models", "classify_model", "fill_mask_model", mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        # An empty folder setting means no folder, not the working directory.
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _a_key_or_none(cls, value):
        # `ROBERTA_API_KEY=` (as compose writes an unset variable) means no key. A key read from a secret file
        # ends with a newline that no client sends: whitespace around it is not part of it. A key of only
        # whitespace is a mistake, never "no authentication"; a key must also fit in a header as it is.
        if value is None or value == "":
            return None
        key = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(key, str):
            return value
        key = key.strip()
        if not key:
            raise ValueError("the key is only whitespace; set a key, or leave the setting empty for no authentication")
        if not all("!" <= character <= "~" for character in key):
            raise ValueError("the key must be printable ASCII without spaces, as it is sent in the Authorization header")
        return key

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value):
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("providers")
    @classmethod
    def _some_provider(cls, value):
        if not value:
            raise ValueError("name at least one provider: cuda, cpu")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self):
        # A request is queued whole or refused whole: with a smaller queue it would get 429 forever.
        if self.max_queue < self.max_inputs:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_inputs ({self.max_inputs})")
        return self

    @model_validator(mode="after")
    def _timeouts_in_order(self):
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError("request_timeout_s must not exceed max_request_timeout_s")
        return self

    @model_validator(mode="after")
    def _processes_share_a_known_port(self):
        # Each process binds the port itself: port 0 would give each its own.
        if self.processes > 1 and self.port == 0:
            raise ValueError("with processes above 1, name the port: each process binds it, and 0 would give each its own")
        return self

    @field_validator("models")
    @classmethod
    def _name_equals_folder(cls, value):
        if value is not None:
            parse_named_models(value)
        return value

    @model_validator(mode="after")
    def _some_model(self):
        if not (self.model_repository or self.models or self.classify_model or self.fill_mask_model):
            raise ValueError(
                "name a model: ROBERTA_MODEL_REPOSITORY (a folder of exports), ROBERTA_MODELS (name=folder,...), "
                "ROBERTA_CLASSIFY_MODEL or ROBERTA_FILL_MASK_MODEL"
            )
        return self

    def named_models(self) -> dict[str, Path]:
        return parse_named_models(self.models) if self.models else {}


MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")  # safe in a URL path and a metric label


def parse_named_models(value: str) -> dict[str, Path]:
    """`sentiment=/models/a,ner=/models/b` -> {name: folder}; a malformed entry or a repeated name is an error."""
    named: dict[str, Path] = {}
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        name, equals, folder = (piece.strip() for piece in entry.partition("="))
        if not equals or not folder:
            raise ValueError(f"{entry!r} is not name=folder")
        if not MODEL_NAME.match(name):
            raise ValueError(f"model name {name!r} must be letters, digits, '.', '_' or '-' (at most 100)")
        if name in named:
            raise ValueError(f"model name {name!r} is given twice")
        named[name] = Path(folder)
    return named


def describe_settings_error(error: ValidationError) -> str:
    """One line for a bad setting, named as both spellings: `ROBERTA_MAX_QUEUE / --max-queue: ...`."""
    parts = []
    for item in error.errors():
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        field = str(item["loc"][0]) if item.get("loc") else ""
        if field in Settings.model_fields:
            parts.append(f"ROBERTA_{field.upper()} / --{field.replace('_', '-')}: {message}")
        else:
            parts.append(message)
    return "; ".join(parts)


def settings_or_exit(*, cli: bool) -> Settings:
    """Settings from the environment, and the command line when `cli`; or one line and exit 1. Logging configured."""
    try:
        if cli:
            settings = Settings(_cli_parse_args=True, _cli_kebab_case=True, _cli_prog_name="python -m app")
        else:
            settings = Settings()
    except ValidationError as exc:
        exit_with(describe_settings_error(exc))
    configure_logging(settings.log_level, settings.log_format)
    for line in unknown_variables(os.environ):
        logging.getLogger("app.settings").warning(line)
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A line for each ROBERTA_* variable that names no setting (a typo is otherwise silently ignored), with the
    closest setting's name when one is close."""
    known = {f"ROBERTA_{name.upper()}" for name in Settings.model_fields}
    lines = []
    for name in sorted(environ):
        if name.startswith("ROBERTA_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else "; python -m app --help lists the settings"
            lines.append(f"{name} is not a setting and is ignored{hint}")
    return lines


def opentelemetry_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """OpenTelemetry's own variables (OTEL_*), which configure tracing (app.serving.tracing.build_tracing)."""
    return {name: value for name, value in (os.environ if environ is None else environ).items() if name.startswith("OTEL_")}


def exit_with(message: str) -> None:
    """What a bad setting or model ends with: one line on stderr naming what to change, status 1."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
