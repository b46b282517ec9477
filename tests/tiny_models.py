"""Tiny RoBERTa checkpoints built offline: random weights, a BPE tokenizer trained here.

Small enough that exporting one takes about a second, real enough that every layer of
the export and serving path runs as it would for roberta-base.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

SUBJECTS = ["the film", "this movie", "the acting", "the plot", "her voice", "the ending", "the story", "his music"]
VERBS = ["is", "was", "seems", "felt", "looks", "became"]
ADJECTIVES = ["good", "bad", "wonderful", "awful", "boring", "brilliant", "dull", "moving", "funny", "slow"]
TAILS = ["", " and I loved it", " but too long", ", sadly", " from start to finish", " for a sequel"]

LABELS = {0: "negative", 1: "positive"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "MISC"}  # MISC: a tag without B-/I-
NLI_LABELS = {0: "contradiction", 1: "neutral", 2: "entailment"}


def sentences(count: int = 400, seed: int = 0) -> list[str]:
    combos = [f"{s} {v} {a}{t}." for s, v, a, t in itertools.product(SUBJECTS, VERBS, ADJECTIVES, TAILS)]
    random.Random(seed).shuffle(combos)
    return [text[0].upper() + text[1:] for text in combos[:count]]


def build_tokenizer(folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    corpus = sentences() + ["Hello world.", "Unicode: naïve café, Tōkyō 🙂."]
    bpe.train_from_iterator(
        corpus, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(folder))
    return RobertaTokenizerFast(
        vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"), model_max_length=64
    )


# Per exported task (app.tasks.specs): the labels of its head when it has them, and the head's weight to scale so
# that a random head gives distinct answers (labels and top-k without ties, tags that vary and form groups).
CHECKPOINTS: dict[str, dict] = {
    "text-classification": {"labels": LABELS, "spread": ("classifier.out_proj.weight", 40.0)},
    "fill-mask": {"labels": None, "spread": None},
    "token-classification": {"labels": NER_LABELS, "spread": ("classifier.weight", 30.0)},
    "feature-extraction": {"labels": None, "spread": None},
    "question-answering": {"labels": None, "spread": ("qa_outputs.weight", 30.0)},
}
PROMPTS = {"query": "query: ", "passage": "passage: "}


def build_checkpoint(
    folder: Path, task: str, tokenizer, *, num_labels: int = 2, labels: dict[int, str] | None = None, seed: int = 0, **config
) -> Path:
    """A tiny checkpoint of `task`'s head (the spec's Auto class), random weights, saved with `tokenizer`."""
    import torch
    import transformers
    from transformers import RobertaConfig

    from app.tasks.specs import EXPORTED

    spec, recipe = EXPORTED[task], CHECKPOINTS[task]
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,  # 64 tokens after RoBERTa's padding_idx offset
    )
    shape.update(config)
    if spec.labelled:
        default = recipe["labels"] if num_labels == 2 or recipe["labels"] is not LABELS else {i: f"label_{i}" for i in range(num_labels)}
        shape.setdefault("id2label", labels or default)
        shape.setdefault("label2id", {v: k for k, v in shape["id2label"].items()})
    model = getattr(transformers, spec.auto_class).from_config(RobertaConfig(**shape))
    if recipe["spread"] is not None:
        name, factor = recipe["spread"]
        with torch.no_grad():
            model.get_parameter(name).mul_(factor)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_sentence_transformer(folder: Path, tokenizer, *, pooling: str = "mean", normalize: bool = True,
                               prompts: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A tiny sentence-transformers folder as `SentenceTransformer.save` writes one: the encoder at its root, a
    Pooling module, a Normalize module when `normalize`, the prompts in config_sentence_transformers.json."""
    from sentence_transformers import SentenceTransformer, models

    encoder = build_checkpoint(folder.with_name(folder.name + "-encoder"), "feature-extraction", tokenizer, seed=seed)
    transformer = models.Transformer(str(encoder))
    modules = [transformer, models.Pooling(32, pooling)]  # build_checkpoint's hidden_size
    if normalize:
        modules.append(models.Normalize())
    SentenceTransformer(modules=modules, prompts=PROMPTS if prompts is None else prompts, device="cpu").save(str(folder))
    return folder
