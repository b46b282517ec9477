"""Sentence embeddings: one vector per text, as sentence-transformers' `SentenceTransformer.encode` makes it.

The export's graph pools the tokens (mean, CLS or max, as the model was trained; export/embedding_graph.py), so
each sequence comes back as one row of `dimensions` floats; this module puts the prompt before each text,
normalizes where the model does (or the request asks), and shapes the answer. Two bodies:

- the Hugging Face Inference API's feature-extraction body, which is TEI's `/embed` body (`inputs`, `normalize`,
  `truncate`, `truncation_direction`, `prompt_name`), at `/embed` and `/models/{name}`; the answer is a list of
  vectors, one per input, as TEI answers;
- OpenAI's `/v1/embeddings` (`input`, `model`, `encoding_format`, `dimensions`), the OpenAIEmbeddings dialect.
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, Field

from app.errors import InvalidInput
from app.serving.model_folder import ModelFolderError
from app.tasks.base import Answer, Cost, Dialect, Model, Task, Work, check_not_blank, texts_of
from app.tasks.schemas import Options, Strict, Text
from app.tasks.specs import SPECS

SHORTEN = "Shorten it, or send truncate: true to cut it"
OUTPUT = SPECS["feature-extraction"].outputs[0]


class EmbedRequest(BaseModel):
    model_config = Strict
    inputs: Text | list[Text]
    normalize: bool | None = Field(None, description="unit-length vectors; default: as the model was trained (its "
                                   "Normalize module)")
    truncate: bool = Field(False, description="cut inputs longer than the model's limit instead of refusing them (413)")
    truncation_direction: Literal["right", "left", "Right", "Left"] = Field(
        "right", description="with truncate: which end of a long input is cut off")
    prompt_name: str | None = Field(None, description="a prompt of the model's (config_sentence_transformers.json "
                                    "`prompts`), put before each input; default: the model's default prompt, if any")
    options: Options = None


class FeatureExtraction(Task):
    spec = SPECS["feature-extraction"]
    summary = "Sentence embeddings, one vector per text"
    request = EmbedRequest
    response = list[list[float]]
    expected = {"inputs": "a string or a list of strings", "inputs[]": "a string"}
    large_answers = True  # 1,024 floats a text: rendered off the event loop

    def check(self, model: Model) -> None:
        embedding = model.folder.manifest.get("embedding")
        if not isinstance(embedding, dict) or embedding.get("pooling") not in ("mean", "cls", "max"):
            raise ModelFolderError(f"{model.folder.path}/manifest.json does not say how the model pools its tokens; "
                                   "re-export it with `python -m export`")

    def cost(self, body: EmbedRequest, model: Model) -> Cost:
        texts, prompt = texts_of(body.inputs), self.prompt(model, body.prompt_name)
        return Cost(len(texts), sum(len(prompt) + len(text) for text in texts))

    async def prepare(self, model: Model, body: EmbedRequest, deadline: float) -> Work:
        texts = texts_of(body.inputs)
        check_not_blank(texts)
        prompt = self.prompt(model, body.prompt_name)
        texts = [prompt + text for text in texts] if prompt else texts
        if body.truncation_direction.lower() == "right" or not body.truncate:
            encoded = await model.encode(texts, body.truncate, deadline, SHORTEN)
            return Work([e.ids for e in encoded])
        # Cut from the left: each text's last tokens, so it is tokenized whole (at most the body's length).
        encoder = model.encoder
        tokens = await model.tokens(texts, deadline, most=max(map(len, texts)) + encoder.max_seq_len)
        return Work([encoder.single(t.ids[len(t.ids) - min(len(t.ids), encoder.room):]) for t in tokens])

    def answer(self, model: Model, body: EmbedRequest, work: Work, rows: list[dict[str, np.ndarray]]) -> Answer:
        normalize = body.normalize if body.normalize is not None else model.folder.manifest["embedding"]["normalize"]
        vectors = np.stack([row[OUTPUT] for row in rows])
        return Answer(unit_length(vectors).tolist() if normalize else vectors.astype(np.float32, copy=False).tolist())

    def info(self, model: Model) -> dict:
        embedding = model.folder.manifest["embedding"]
        return {"embedding": {key: embedding[key] for key in ("pooling", "normalize", "dimensions", "prompts",
                                                              "default_prompt_name")}}

    @staticmethod
    def prompt(model: Model, name: str | None) -> str:
        embedding = model.folder.manifest["embedding"]
        prompts = embedding.get("prompts") or {}
        name = name if name is not None else embedding.get("default_prompt_name")
        if name is None:
            return ""
        if name not in prompts:
            known = ", ".join(sorted(prompts)) or "none"
            raise InvalidInput(f"prompt_name {name[:100]!r} is not one of the model's prompts ({known})")
        return prompts[name]



def unit_length(vectors: np.ndarray) -> np.ndarray:
    """Each row divided by its length, as torch's `F.normalize` does it (a zero vector stays zero), in float32."""
    vectors = vectors.astype(np.float32, copy=False)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class OpenAIEmbeddingsRequest(BaseModel):
    model_config = Strict
    input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
        description="a text or a list of them (token arrays are not taken: send text)")
    model: str = Field(description="the name of a served embedding model (GET /v1/models)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's little-endian float32 bytes, as the openai SDK asks by default")
    dimensions: int | None = Field(None, ge=1, description="the first this many numbers of each vector, made unit "
                                   "length again; meaningful for models trained for shortened vectors (Matryoshka)")
    user: str | None = Field(None, description="accepted for OpenAI compatibility; ignored")


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingsAnswer(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class OpenAIEmbeddings(Dialect):
    route = "/v1/embeddings"
    summary = "Sentence embeddings in OpenAI's shape (the openai SDK's embeddings.create)"
    request = OpenAIEmbeddingsRequest
    response = OpenAIEmbeddingsAnswer
    expected = {"input": "a string or a list of strings", "input[]": "a string"}

    def model_name(self, body: OpenAIEmbeddingsRequest) -> str:
        return body.model

    def task_body(self, body: OpenAIEmbeddingsRequest, model: Model) -> EmbedRequest:
        dimensions = model.folder.manifest["embedding"]["dimensions"]
        if body.dimensions is not None and body.dimensions > dimensions:
            raise InvalidInput(f"dimensions {body.dimensions} is more than the model's {dimensions}")
        # OpenAI cuts nothing silently: a text longer than the model takes is a 413, as on /embed.
        return EmbedRequest(inputs=body.input)

    def render(self, model: Model, body: OpenAIEmbeddingsRequest, work: Work, answer: Answer) -> Answer:
        vectors = np.asarray(answer.content, dtype=np.float32)
        if body.dimensions is not None:  # shortened vectors are made unit length again, as OpenAI's are
            vectors = unit_length(vectors[:, :body.dimensions])
        tokens = sum(len(ids) for ids in work.sequences)
        data = [{"object": "embedding", "index": index, "embedding": _encoded(vector, body.encoding_format)}
                for index, vector in enumerate(vectors)]
        return Answer({"object": "list", "data": data, "model": model.name,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _encoded(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


FeatureExtraction.dialects = (OpenAIEmbeddings(),)
