"""Write a roberta-base-shaped checkpoint with random weights and the real roberta-base tokenizer.

For speed and size measurements only: the answers mean nothing. The tokenizer files are
read from ../shared/data/roberta-base-tokenizer (never copied into the repo).

    python scripts/random_roberta.py --task text-classification --output /tmp/rb-cls
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "roberta-base-tokenizer"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="text-classification",
                        choices=["text-classification", "fill-mask", "token-classification", "question-answering", "feature-extraction",
                                 "text-ranking"],
                        help="feature-extraction: a sentence-transformers folder (mean pooling, Normalize); text-ranking: a "
                        "cross-encoder (a classifier of one label)")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tiny-encoder", action="store_true",
        help="2 layers of width 64 under roberta-base's vocabulary and length: what the vocabulary head alone costs",
    )
    args = parser.parse_args()

    import torch
    from transformers import (
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaForQuestionAnswering,
        RobertaModel,
        RobertaForSequenceClassification,
        RobertaForTokenClassification,
        RobertaTokenizerFast,
    )

    torch.manual_seed(args.seed)
    tokenizer = RobertaTokenizerFast(
        vocab_file=str(args.tokenizer / "vocab.json"), merges_file=str(args.tokenizer / "merges.txt"), model_max_length=512
    )
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if args.tiny_encoder else {}
    if args.task == "fill-mask":
        model = RobertaForMaskedLM(RobertaConfig(**shape))
    elif args.task == "token-classification":
        labels = dict(enumerate(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]))
        model = RobertaForTokenClassification(RobertaConfig(id2label=labels, label2id={v: k for k, v in labels.items()}, **shape))
    elif args.task == "question-answering":
        model = RobertaForQuestionAnswering(RobertaConfig(**shape))
    elif args.task == "feature-extraction":
        model = RobertaModel(RobertaConfig(**shape), add_pooling_layer=False)
    elif args.task == "text-ranking":
        model = RobertaForSequenceClassification(RobertaConfig(num_labels=1, **shape))
    else:
        labels = {0: "negative", 1: "positive"}
        model = RobertaForSequenceClassification(
            RobertaConfig(id2label=labels, label2id={v: k for k, v in labels.items()}, **shape)
        )
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    if args.task == "feature-extraction":  # the encoder at the folder's root, as SentenceTransformer.save lays it out
        from sentence_transformers import SentenceTransformer, models

        transformer = models.Transformer(str(args.output))
        modules = [transformer, models.Pooling(model.config.hidden_size, "mean"), models.Normalize()]
        SentenceTransformer(modules=modules, device="cpu").save(str(args.output))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
