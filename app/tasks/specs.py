"""Every task the project knows, in one table that the exporter, the service and the tests read.

Dependency-free on purpose: `python -m export` reads it without loading the service, and the
tests build their tiny checkpoints from it. A new task is an entry here, its module in
app/tasks (its body and its answer), its tiny checkpoint (tests/tiny_models.py) and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

MASK_POSITIONS = "mask_positions"  # the fill-mask graph's third input: (batch row, token index) pairs


@dataclass(frozen=True)
class TaskSpec:
    name: str  # the Hub's pipeline tag (transformers' pipeline name where it has one)
    route: str  # the endpoint that serves the task's default model
    module: str  # app.tasks.<module> holds its Task (app.tasks.registry finds it there)
    # The checkpoint head it is exported from, as `architectures` names end, and the Auto class that loads it;
    # None: the task serves another task's exports (zero-shot: an NLI text classifier).
    head: str | None
    auto_class: str | None
    labelled: bool  # config.json's id2label names the outputs' columns
    outputs: tuple[str, ...]  # the graph's outputs, by name; the runtime hands back each, the batcher slices each
    extra_inputs: tuple[str, ...] = ()  # inputs besides input_ids and attention_mask
    per_token: bool = False  # outputs have a row per token (verification compares every real token)
    packed: bool = False  # export --packed writes a padding-free graph for it (export/packed_graph.py)
    # Texts the export verifies its graphs with against PyTorch; `{mask}` is the tokenizer's mask token.
    probes: tuple[str, ...] = ()


PROBES = (
    "Hello world.",
    "The movie was surprisingly good, and the acting was superb.",
    "a",
    "Unicode survives: naïve café, Tōkyō and an emoji 🙂.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light.",
    "I would not recommend this to anyone.",
    "Spaces   between,\ttabs and  José's 🙂🙂 emoji.",
)
MASKED_PROBES = (
    "Hello {mask}.",
    "The movie was surprisingly {mask}, and the acting was superb.",
    "{mask}",
    "Unicode survives: naïve café, Tōkyō and an {mask} 🙂.",
    "It was the best of times, it was the worst of {mask}, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the {mask} of incredulity, it was the season of Light.",
    "I would not {mask} this to anyone.",
)

SPECS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("text-classification", "/classify", "text_classification", "ForSequenceClassification", "AutoModelForSequenceClassification",
                 labelled=True, outputs=("logits",), packed=True, probes=PROBES),
        TaskSpec("zero-shot-classification", "/zero-shot-classification", "zero_shot", None, None, labelled=True, outputs=("logits",)),
        TaskSpec("fill-mask", "/fill-mask", "fill_mask", "ForMaskedLM", "AutoModelForMaskedLM", labelled=False, outputs=("logits",),
                 extra_inputs=(MASK_POSITIONS,), per_token=True, packed=True, probes=MASKED_PROBES),
        TaskSpec("token-classification", "/token-classification", "token_classification", "ForTokenClassification",
                 "AutoModelForTokenClassification", labelled=True, outputs=("logits",), per_token=True, packed=True,
                 probes=PROBES),
        # A bare encoder (RobertaModel, XLMRobertaModel; a sentence-transformers folder holds one): its graph pools
        # the tokens into one vector per text (export/embedding_graph.py).
        TaskSpec("feature-extraction", "/embed", "feature_extraction", "Model", "AutoModel", labelled=False,
                 outputs=("sentence_embedding",), probes=PROBES),
        # Each window of a long context is one sequence: the question and a stretch of the context.
        TaskSpec("question-answering", "/question-answering", "question_answering", "ForQuestionAnswering",
                 "AutoModelForQuestionAnswering", labelled=False, outputs=("start_logits", "end_logits"), per_token=True,
                 probes=PROBES),
        # A cross-encoder is a text classifier of one label; this task pairs a query with each document.
        TaskSpec("text-ranking", "/rerank", "rerank", None, None, labelled=True, outputs=("logits",)),
    )
}

EXPORTED = {name: spec for name, spec in SPECS.items() if spec.head is not None}  # the tasks `python -m export` writes
