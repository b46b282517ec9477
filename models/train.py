"""Train the embedded default models from ../shared/data, the RoBERTa way, on a 2-core CPU in about an hour.

1. a byte-level BPE tokenizer (RoBERTa's special tokens, `<mask>` with lstrip) on the books and SST-2 train text;
2. a small RobertaForMaskedLM pretrained with dynamic masking (15%, 80/10/10 re-drawn each time a sequence is
   seen), no next-sentence prediction, full sentences packed to the maximum length;
3. a RobertaForSequenceClassification (negative/positive) fine-tuned from that encoder on SST-2 train, the
   checkpoint with the best SST-2 dev accuracy kept.

    python models/train.py            # the shipped models (about an hour on 2 cores)
    python models/train.py --quick    # a minute-long smoke run into a temporary folder

Weights are saved in float16 to keep both checkpoints under 40 MB; transformers loads them as float32.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the embedded default RoBERTa models.")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=HERE)
    parser.add_argument("--quick", action="store_true", help="tiny run for tests: minutes, not an hour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=128, help="tokens per packed pretraining sequence")
    parser.add_argument("--mlm-steps", type=int, default=3600)
    parser.add_argument("--mlm-batch", type=int, default=32)
    parser.add_argument("--mlm-lr", type=float, default=1e-3)
    parser.add_argument("--mlm-dropout", type=float, default=0.0,
                        help="dropout while pretraining: off, as data is seen only a few times (fine-tuning uses 0.1)")
    parser.add_argument("--init", choices=["neighbours", "random"], default="neighbours",
                        help="neighbours: start two layer-0 heads looking at the previous and next token (see "
                             "init_neighbour_heads); random: BERT's N(0, 0.02) everywhere")
    parser.add_argument("--neighbour-gain", type=float, default=1.5, help="sharpness of those two heads at the start")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bfloat16 autocast for matrix products (AMX/AVX-512 CPUs run it about 1.5x faster)")
    parser.add_argument("--cls-epochs", type=float, default=1.5)
    parser.add_argument("--cls-batch", type=int, default=32)
    parser.add_argument("--cls-lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--probe-every", type=int, default=500, help="print fill-mask answers while pretraining")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.vocab_size, args.layers, args.hidden, args.heads = 1000, 2, 64, 2
        args.mlm_steps, args.mlm_batch, args.cls_epochs, args.eval_every, args.probe_every = 30, 16, 0.02, 20, 15
    return args


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def read_sst2(path: Path) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for row in path.read_text(encoding="utf-8").splitlines()[1:]:
        text, _, label = row.rpartition("\t")
        if text.strip():
            texts.append(text.strip())
            labels.append(int(label))
    return texts, labels


def train_tokenizer(corpus: list[str], vocab_size: int, folder: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL, show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    # RobertaTokenizerFast gives <mask> lstrip=True: "the <mask>" masks the word with its leading space.
    return RobertaTokenizerFast(vocab_file=str(folder / "vocab.json"), merges_file=str(folder / "merges.txt"))


def pack(tokenizer, lines: list[str], max_len: int) -> list[list[int]]:
    """FULL-SENTENCES: one token stream cut into max_len blocks, each wrapped in <s> ... </s>."""
    body = max_len - 2
    stream: list[int] = []
    for start in range(0, len(lines), 2000):
        # A leading space makes each line's first word the same token it is mid-sentence ("Ġword").
        chunk = [" " + line for line in lines[start : start + 2000]]
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *stream[i : i + body], eos] for i in range(0, len(stream) - body + 1, body)]


def schedule(optimizer, total: int, warmup: int):
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(args, tokenizer, blocks: list[list[int]]):
    import torch
    from transformers import DataCollatorForLanguageModeling, RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden,
        max_position_embeddings=args.max_len + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        hidden_dropout_prob=args.mlm_dropout,
        attention_probs_dropout_prob=args.mlm_dropout,
    )
    model = RobertaForMaskedLM(config)
    if args.init == "neighbours":
        init_neighbour_heads(model, args.neighbour_gain)
    # Masks are drawn anew every time a block is batched: RoBERTa's dynamic masking, 80/10/10.
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.mlm_lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    scheduler = schedule(optimizer, args.mlm_steps, warmup=max(1, args.mlm_steps // 16))
    rng = random.Random(args.seed)
    order: list[int] = []
    model.train()
    started, seen = time.time(), 0
    for step in range(args.mlm_steps):
        if len(order) < args.mlm_batch:
            order.extend(rng.sample(range(len(blocks)), len(blocks)))
        batch = collator([{"input_ids": blocks[i]} for i in order[: args.mlm_batch]])
        del order[: args.mlm_batch]
        with autocast(args.bf16):
            loss = masked_lm_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += args.mlm_batch
        if step % 50 == 0 or step == args.mlm_steps - 1:
            rate = seen / (time.time() - started)
            log(f"mlm step {step + 1}/{args.mlm_steps} loss {loss.item():.3f} ({rate:.0f} seq/s, "
                f"epoch {seen / len(blocks):.2f})")
        if (step + 1) % args.probe_every == 0:
            log_probes(model, tokenizer)
    model.eval()
    # Fine-tuning and anyone loading the checkpoint get the usual regularisation back.
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.1
    return model


PROBES = ("She opened the <mask> and walked in.", "It was a dark and stormy <mask>.", "He drank a cup of <mask>.")


def log_probes(model, tokenizer) -> None:
    import torch

    model.eval()
    with torch.inference_mode():
        for probe in PROBES:
            encoded = tokenizer(probe, return_tensors="pt")
            position = int((encoded["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0])
            top = model(**encoded).logits[0, position].topk(5).indices
            log(f"  {probe} -> {' | '.join(tokenizer.decode([int(i)]).strip() for i in top)}")
    model.train()


def init_neighbour_heads(model, gain: float) -> None:
    """Start layer 0 with one head on the previous token and one on the next; everything else as BERT's init.

    From BERT's random init a small MLM sits for thousands of steps on the unigram plateau
    (it predicts "the" and "," everywhere): attention has to discover, from near-zero query and
    key weights, that neighbouring tokens matter. Measured here, 4 layers x 256, 64-token blocks:
    held-out loss after 500 steps 6.51 from random init, 5.54 from this one. The architecture
    and every parameter stay those of RobertaForMaskedLM; only the starting values differ:

    - positions get the first `head_size` dimensions to themselves: sinusoids (Vaswani et al.) of the
      highest frequencies there, and word embeddings start at zero in those dimensions;
    - in layer 0, head 0's query is the key rotated one position back, head 1's one position forward
      (a rotation of each sin/cos pair), so q_i . k_j peaks at j = i - 1 and j = i + 1.
    """
    import torch

    config = model.config
    width = config.hidden_size
    head = width // config.num_attention_heads
    rows = config.max_position_embeddings
    embeddings = model.roberta.embeddings
    position = (torch.arange(rows, dtype=torch.float32) - (config.pad_token_id + 1)).clamp(min=0)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float32) / width)[: head // 2]
    table = torch.zeros(rows, width)
    table[:, 0:head:2] = torch.sin(position * frequency)
    table[:, 1:head:2] = torch.cos(position * frequency)
    # As much energy per position as a word embedding has (std initializer_range over `width` dimensions).
    scale = config.initializer_range * math.sqrt(2 * width / head)
    attention = model.roberta.encoder.layer[0].attention.self
    with torch.no_grad():
        embeddings.position_embeddings.weight.copy_(table * scale)
        embeddings.position_embeddings.weight[config.pad_token_id].zero_()
        embeddings.word_embeddings.weight[:, :head] = 0.0
        embeddings.token_type_embeddings.weight.zero_()
        for index, offset in ((0, -1), (1, 1)):
            block = slice(index * head, (index + 1) * head)
            for weights in (attention.query, attention.key):
                weights.weight[block] = 0.0
                weights.bias[block] = 0.0
            for pair in range(head // 2):
                row, col = index * head + 2 * pair, 2 * pair
                angle = float(frequency[pair]) * offset
                attention.key.weight[row, col] = attention.key.weight[row + 1, col + 1] = gain
                # (sin wi, cos wi) -> (sin w(i+offset), cos w(i+offset))
                attention.query.weight[row, col] = gain * math.cos(angle)
                attention.query.weight[row, col + 1] = gain * math.sin(angle)
                attention.query.weight[row + 1, col] = -gain * math.sin(angle)
                attention.query.weight[row + 1, col + 1] = gain * math.cos(angle)


def autocast(enabled: bool):
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def masked_lm_loss(model, batch):
    """The MLM loss with the vocabulary projection run only where a token is masked.

    RobertaForMaskedLM projects every position onto the vocabulary and then ignores 85% of them;
    on this model that projection is a third of the compute.
    """
    import torch.nn.functional as F

    hidden = model.roberta(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    masked = batch["labels"] != -100
    logits = model.lm_head(hidden[masked])
    return F.cross_entropy(logits.float(), batch["labels"][masked])


def evaluate(model, tokenizer, texts, labels, batch_size=128) -> float:
    import torch

    correct = 0
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
            predictions = model(**batch).logits.argmax(-1)
            correct += int((predictions == torch.tensor(labels[start : start + batch_size])).sum())
    return correct / len(texts)


def finetune(args, tokenizer, mlm_folder: Path, train, dev):
    import torch
    from transformers import RobertaForSequenceClassification

    labels = {0: "negative", 1: "positive"}
    model = RobertaForSequenceClassification.from_pretrained(
        str(mlm_folder), num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()},
        problem_type="single_label_classification", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
    )
    texts, targets = train
    steps = max(1, int(args.cls_epochs * len(texts) / args.cls_batch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.cls_lr, weight_decay=0.01)
    scheduler = schedule(optimizer, steps, warmup=max(1, steps // 10))
    rng = random.Random(args.seed + 1)
    order: list[int] = []
    best, best_state, started = -1.0, None, time.time()
    for step in range(steps):
        model.train()
        if len(order) < args.cls_batch:
            order.extend(rng.sample(range(len(texts)), len(texts)))
        chosen, order[:] = order[: args.cls_batch], order[args.cls_batch :]
        batch = tokenizer([texts[i] for i in chosen], padding=True, truncation=True, max_length=128, return_tensors="pt")
        with autocast(args.bf16):
            loss = model(**batch, labels=torch.tensor([targets[i] for i in chosen])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % args.eval_every == 0 or step == steps - 1:
            model.eval()
            accuracy = evaluate(model, tokenizer, *dev)
            log(f"cls step {step + 1}/{steps} loss {loss.item():.3f} dev accuracy {accuracy:.4f} "
                f"({(step + 1) * args.cls_batch / (time.time() - started):.0f} seq/s)")
            if accuracy > best:
                best, best_state = accuracy, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    return model, best


def save(model, tokenizer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    config.pop("torch_dtype", None)
    config["dtype"] = "float32"  # load as float32: the fp16 file is only a smaller container
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer.save_pretrained(folder)
    model.float()


def main() -> None:
    args = parse_args()
    import torch

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)
    output = args.output if not args.quick or args.output != HERE else Path("/tmp/roberta-train-quick")
    train_texts, train_labels = read_sst2(args.data / "sst2" / "train.tsv")
    dev = read_sst2(args.data / "sst2" / "dev.tsv")
    books = [line.strip() for line in (args.data / "books" / "books_clean.txt").read_text(encoding="utf-8").splitlines()]
    books = [line for line in books if line]
    if args.quick:
        books, train_texts, train_labels = books[:3000], train_texts[:2000], train_labels[:2000]
        dev = (dev[0][:200], dev[1][:200])
    log(f"{len(books)} book lines, {len(train_texts)} SST-2 train sentences, {len(dev[0])} dev sentences")

    tokenizer = train_tokenizer(books + train_texts, args.vocab_size, output / ".tokenizer")
    log(f"tokenizer: {len(tokenizer)} tokens")
    blocks = pack(tokenizer, books + train_texts, args.max_len)
    log(f"pretraining on {len(blocks)} packed blocks of {args.max_len} tokens")

    mlm = pretrain(args, tokenizer, blocks)
    mlm_folder = output / "roberta-mini-mlm"
    save(mlm, tokenizer, mlm_folder)
    log(f"saved {mlm_folder}")

    classifier, accuracy = finetune(args, tokenizer, mlm_folder, (train_texts, train_labels), dev)
    cls_folder = output / "roberta-mini-sst2"
    save(classifier, tokenizer, cls_folder)
    log(f"saved {cls_folder}: best SST-2 dev accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
