"""How a checkpoint makes its sentence vectors, read without torch (refusals come before the slow part).

A sentence-transformers folder says how its vectors are made in its own files: `modules.json` lists
the modules (Transformer, Pooling, optionally Normalize), the pooling module's `config.json` the
mode, `sentence_bert_config.json` the longest input, and `config_sentence_transformers.json` the
prompts. A plain `RobertaModel` checkpoint says none of it: `--pooling` does, and `--normalize`.
Pooling runs inside the graph, so the service moves `[batch, hidden]` instead of every token's
state; normalization is left to the service (it is a division per vector, and a request may ask
for the raw vector).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from export.errors import BadOption, UnsupportedModel

POOLINGS = ("mean", "cls", "max")
_SHORT = {"mean_tokens": "mean", "cls_token": "cls", "max_tokens": "max"}  # the older configs' mode names


@dataclass(frozen=True)
class Embedding:
    """How a checkpoint's sentence vectors are made; the manifest records it as `embedding`."""

    pooling: str  # mean, cls, max
    normalize: bool  # the vectors are unit length unless a request asks otherwise
    dimensions: int  # the vector's length (the encoder's hidden size)
    prompts: dict[str, str] = field(default_factory=dict)  # prompt name -> the text put before each input
    default_prompt_name: str | None = None
    max_seq_length: int | None = None  # sentence-transformers' own limit on input tokens, when it sets one

    def as_dict(self) -> dict:
        return asdict(self)


def read_embedding(folder: Path, config: dict, pooling: str | None, normalize: bool) -> Embedding:
    """From a sentence-transformers folder's files, or from the flags for a plain encoder checkpoint. Flags that
    contradict the folder's own files are refused: the folder says how it was trained."""
    hidden = int(config.get("hidden_size", 0))
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        if pooling is None:
            raise BadOption("a plain encoder checkpoint does not say how to pool its tokens; pass --pooling "
                            f"({', '.join(POOLINGS)}), and --normalize for unit-length vectors")
        return Embedding(pooling=pooling, normalize=normalize, dimensions=hidden)
    modules = _read(modules_file)
    kinds = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    transformer = kinds.get("Transformer")
    if transformer is None or transformer.get("path", "") not in ("", "."):
        raise UnsupportedModel("this sentence-transformers folder keeps its encoder in a subfolder; load it with "
                               "SentenceTransformer(FOLDER) and save it again with model.save(NEW_FOLDER)")
    extra = sorted(set(kinds) - {"Transformer", "Pooling", "Normalize"})
    if extra:
        raise UnsupportedModel(f"the sentence-transformers modules {', '.join(extra)} are not served; the service "
                               "serves Transformer, Pooling and Normalize")
    if "Pooling" not in kinds:
        raise UnsupportedModel("the sentence-transformers folder has no Pooling module; the service needs one")
    pooling_config = _read(folder / kinds["Pooling"]["path"] / "config.json")
    modes = _pooling_modes(pooling_config)
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise UnsupportedModel(f"the pooling module uses {', '.join(modes) or 'no mode'}; the service serves exactly "
                               f"one of {', '.join(POOLINGS)}")
    if pooling_config.get("include_prompt") is False:
        raise UnsupportedModel("the pooling module leaves the prompt's tokens out (include_prompt false), which the "
                               "service does not do")
    if pooling is not None and pooling != modes[0]:
        raise BadOption(f"--pooling {pooling} contradicts the folder's pooling module ({modes[0]}); leave it out")
    if normalize and "Normalize" not in kinds:
        raise BadOption("--normalize contradicts the folder, which has no Normalize module; leave it out")
    settings_file = folder / "sentence_bert_config.json"
    settings = _read(settings_file) if settings_file.is_file() else {}
    if settings.get("do_lower_case"):
        raise UnsupportedModel("the folder lower-cases its inputs (do_lower_case), which the service does not do")
    st_config_file = folder / "config_sentence_transformers.json"
    st_config = _read(st_config_file) if st_config_file.is_file() else {}
    prompts = {str(k): str(v) for k, v in (st_config.get("prompts") or {}).items()}
    default_prompt = st_config.get("default_prompt_name")
    return Embedding(
        pooling=modes[0],
        normalize="Normalize" in kinds,
        dimensions=int(pooling_config.get("embedding_dimension") or pooling_config.get("word_embedding_dimension") or hidden),
        prompts=prompts,
        default_prompt_name=str(default_prompt) if default_prompt else None,
        max_seq_length=int(settings["max_seq_length"]) if settings.get("max_seq_length") else None,
    )


def _pooling_modes(config: dict) -> list[str]:
    """sentence-transformers 5 writes `pooling_mode` (a name, or a list of them); earlier versions one boolean per
    mode (`pooling_mode_mean_tokens`, ...)."""
    named = config.get("pooling_mode")
    if named is not None:
        return [_SHORT.get(str(mode), str(mode)) for mode in (named if isinstance(named, list) else [named])]
    return [_SHORT.get(key[len("pooling_mode_"):], key[len("pooling_mode_"):])
            for key, value in config.items() if key.startswith("pooling_mode_") and value is True]


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModel(f"{path} is not readable JSON ({exc})") from exc
