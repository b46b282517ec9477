"""Packed against padded execution, on SST-2 sentences and on a mixed-length workload, in turn.

    python -m bench.packed                      # roberta-base shape, INT8 and fp32, c=8/32/64, 20 s a level
    python -m bench.packed --quick              # the embedded model (texts up to its 128 tokens), 6 s a level

ONNX Runtime alone first (random batches, packed, padded, and cut as the padded batcher would), then both
servers: this checkout on the same export (made with --packed), one with
ROBERTA_EXECUTION=packed, one with padded; every level is taken in slices, one server at a
time (bench.__main__'s measure_interleaved). The mixed-length workload joins SST-2 training
sentences into texts whose lengths in tokens are long-tailed: log-normal, median 64, clipped
to 16-400 (or the model's limit). `python -m bench` runs the same comparison as a section.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import statistics
from pathlib import Path

from bench import servers, wrk
from bench.load import concurrency_level, encode_requests

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
WORK = REPO / "build" / "bench"
MEDIAN_TOKENS, SIGMA = 64, 0.9
SHORTEST, LONGEST = 16, 400


def token_lengths(count: int, longest: int, seed: int = 0) -> list[int]:
    """Long-tailed lengths: log-normal around MEDIAN_TOKENS, clipped to [SHORTEST, longest]."""
    generator = random.Random(seed)
    return [min(longest, max(SHORTEST, round(generator.lognormvariate(math.log(MEDIAN_TOKENS), SIGMA)))) for _ in range(count)]


def mixed_texts(tokenizer_file: Path, count: int = 600, longest: int = LONGEST, seed: int = 0,
                sentences: list[str] | None = None) -> list[str]:
    """SST-2 training sentences (or `sentences`) run together and cut into texts of about token_lengths() tokens
    (special tokens included, never more)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = token_lengths(count, longest, seed)
    if sentences is None:
        sentences = [row.rsplit("\t", 1)[0].strip() for row in TRAIN.read_text(encoding="utf-8").splitlines()[1:] if row.strip()]
    sentences = list(sentences)
    random.Random(seed).shuffle(sentences)
    stream, needed, texts = "", sum(lengths) + 1000, []
    for sentence in itertools.cycle(sentences):  # enough text for every length, tokenized once
        stream += sentence.capitalize() + ". "
        if len(stream) > needed * 6:
            break
    offsets = tokenizer.encode(stream, add_special_tokens=False).offsets
    position = 0
    for length in lengths:
        body = length - 2  # <s> and </s>
        while offsets[position][0] > 0 and stream[offsets[position][0] - 1] != " ":
            position += 1  # start on a word
        start, end = offsets[position][0], offsets[position + body - 1][1]
        text = stream[start:end].strip()
        while len(tokenizer.encode(text).ids) > length and " " in text:  # a cut piece can re-tokenize longer
            text = text.rsplit(" ", 1)[0]
        texts.append(text)
        position += body
    return texts


def alone(folder: Path, precision: str, texts: list[str], batch: int = 16, batches: int = 8, seed: int = 0,
          providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> dict:
    """ONNX Runtime alone, no HTTP: random batches of `texts` as they would arrive, run packed and padded, and cut
    the way the padded batcher would (sorted, in 4 runs), every batch all four ways in turn. Seconds per batch."""
    import time

    import onnxruntime as ort

    from app.engine.batcher import right_pad
    from app.serving.model_folder import load_model_folder
    from app.engine.packing import pack
    from app.engine.tokenize import TextEncoder

    model = load_model_folder(folder)
    encoder = TextEncoder(model.tokenizer_file, model.max_seq_len, model.tokenizer_config)
    files = {"padded": model.files[precision], "packed": model.packed_files[precision]}
    sessions = {name: ort.InferenceSession(str(path), providers=list(providers)) for name, path in files.items()}
    ids = [e.ids for e in encoder.encode(texts)]
    generator = random.Random(seed)
    draws = [generator.choices(ids, k=batch) for _ in range(batches)]

    def run(name: str, sequences) -> None:
        input_ids, mask = right_pad(sequences, encoder.pad_id)
        feeds = pack(input_ids, mask, model.pad_token_id) if name == "packed" else {"input_ids": input_ids, "attention_mask": mask}
        sessions[name].run(None, feeds)

    def sorted_runs(sequences) -> list:
        ordered, size = sorted(sequences, key=len), max(1, len(sequences) // 4)
        return [ordered[start : start + size] for start in range(0, len(ordered), size)]

    ways = {
        "packed_mixed": lambda b: run("packed", b),
        "padded_mixed": lambda b: run("padded", b),
        "padded_sorted_4": lambda b: [run("padded", part) for part in sorted_runs(b)],
        "packed_sorted_4": lambda b: [run("packed", part) for part in sorted_runs(b)],
    }
    for name in sessions:  # warm up
        run(name, draws[0])
    seconds = dict.fromkeys(ways, 0.0)
    for sequences in draws:
        for name, way in ways.items():
            started = time.perf_counter()
            way(sequences)
            seconds[name] += time.perf_counter() - started
    result = {name: total / batches for name, total in seconds.items()}
    result["packed_mixed_over_padded_sorted"] = result["packed_mixed"] / result["padded_sorted_4"]
    print(f"  ONNX Runtime alone, {precision}, {batch} at a time: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
          flush=True)
    return result


def compare(folder: Path, precision: str, workloads: dict[str, list[str]], levels: list[int], seconds: float,
            rounds: int) -> dict:
    """Per workload: packed and padded servers on `folder`, closed loops at each level, in turn."""
    from bench.__main__ import System, measure_interleaved

    results = {}
    for workload, texts in workloads.items():
        bodies = [{"inputs": text} for text in texts]
        requests = encode_requests("127.0.0.1", "/classify", bodies)
        wrk_bodies = wrk.bodies_file(bodies) if wrk.available() else None
        with contextlib.ExitStack() as stack:
            systems = []
            for execution in ("packed", "padded"):
                port = servers.free_port()
                log = WORK / "logs" / f"packed-{execution}.log"
                server = servers.service(execution, folder, port, log, precision=precision, execution=execution)
                stack.enter_context(server)
                system = System(execution, server, itertools.cycle(requests), True, wrk_bodies)
                server.pause()
                systems.append(system)
            by_system, _ = measure_interleaved(systems, levels, seconds, None, rounds, lambda: None)
        entry = {"levels": []}
        for packed, padded in zip(by_system["packed"]["levels"], by_system["padded"]["levels"]):
            entry["levels"].append({
                "level": packed["level"],
                "packed_req_s": packed["requests_per_s"], "padded_req_s": padded["requests_per_s"],
                "packed_over_padded": packed["requests_per_s"] / padded["requests_per_s"],
                "packed_p50_ms": packed["p50_ms"], "padded_p50_ms": padded["p50_ms"],
                "packed_p99_ms": packed["p99_ms"], "padded_p99_ms": padded["p99_ms"],
                "packed_mean_batch": packed.get("mean_batch"), "padded_mean_batch": padded.get("mean_batch"),
                "packed_padding": packed.get("mean_padding"), "padded_padding": padded.get("mean_padding"),
            })
        results[workload] = entry
    return results


def describe(texts: list[str], tokenizer_file: Path) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    lengths = sorted(len(e.ids) for e in tokenizer.encode_batch(texts))
    return {"texts": len(lengths), "tokens_mean": round(statistics.fmean(lengths), 1), "tokens_p50": lengths[len(lengths) // 2],
            "tokens_p90": lengths[int(len(lengths) * 0.9)], "tokens_max": lengths[-1], "tokens_min": lengths[0]}


def markdown(section: dict) -> list[str]:
    lines = ["| precision | workload | concurrency | packed req/s | padded req/s | packed / padded | p50 ms packed / padded | "
             "mean batch packed / padded | padding packed / padded |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for precision, by_workload in section["results"].items():
        for workload, entry in by_workload.items():
            for level in entry["levels"]:
                lines.append(
                    f"| {precision} | {workload} | {level['level']} | {level['packed_req_s']:.1f} | {level['padded_req_s']:.1f} | "
                    f"{level['packed_over_padded']:.2f} | {level['packed_p50_ms']:.0f} / {level['padded_p50_ms']:.0f} | "
                    f"{level['packed_mean_batch'] or 0:.1f} / {level['padded_mean_batch'] or 0:.1f} | "
                    f"{level['packed_padding'] or 0:.0%} / {level['padded_padding'] or 0:.0%} |")
    lines += ["", "ONNX Runtime alone, seconds per batch drawn at random (SST-2: 16 texts, mixed: 8), run packed, padded, "
              "and as the padded batcher would cut it (sorted, 4 runs):", "",
              "| precision | workload | packed | padded | padded, 4 sorted runs | packed, 4 sorted runs | packed / padded sorted |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for precision, by_workload in section.get("alone", {}).items():
        for workload, r in by_workload.items():
            lines.append(f"| {precision} | {workload} | {r['packed_mixed']:.3f} | {r['padded_mixed']:.3f} | "
                         f"{r['padded_sorted_4']:.3f} | {r['packed_sorted_4']:.3f} | {r['packed_mixed_over_padded_sorted']:.2f} |")
    lines += ["", "Workloads (tokens per text, special tokens included): "
              + "; ".join(f"{name}: mean {d['tokens_mean']}, p50 {d['tokens_p50']}, p90 {d['tokens_p90']}, "
                          f"{d['tokens_min']}-{d['tokens_max']}" for name, d in section["workloads"].items())]
    return lines


def run(folder: Path, precisions: list[str], sst2: list[str], levels: list[int], seconds: float, rounds: int) -> dict:
    """The whole comparison, as `python -m bench` embeds it in its report."""
    manifest = json.loads((folder / "manifest.json").read_text())
    longest = min(LONGEST, int(manifest["max_seq_len"]))
    texts = {"sst2": sst2, "mixed": mixed_texts(folder / "tokenizer.json", longest=longest)}
    section = {"workloads": {name: describe(t, folder / "tokenizer.json") for name, t in texts.items()}, "results": {}}
    section["alone"] = {}
    for precision in precisions:
        print(f"packed vs padded, {precision}", flush=True)
        section["alone"][precision] = {name: alone(folder, precision, t, batch=16 if name == "sst2" else 8)
                                       for name, t in texts.items()}
        section["results"][precision] = compare(folder, precision, texts, levels, seconds, rounds)
    return section


def main() -> None:
    from bench.__main__ import EMBEDDED, export, prepare_model, sst2_dev

    parser = argparse.ArgumentParser(prog="python -m bench.packed", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the embedded model, 6 s per level")
    parser.add_argument("--precision", nargs="+", default=None, help="default: int8 fp32 (quick: int8)")
    parser.add_argument("--concurrency", type=concurrency_level, nargs="+", default=[8, 32, 64])
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--output", type=Path, default=None, help="write the section as JSON (and .md beside it)")
    args = parser.parse_args()
    (WORK / "logs").mkdir(parents=True, exist_ok=True)
    folder = export(EMBEDDED, WORK) if args.quick else prepare_model(False, WORK)[1]
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    precisions = args.precision or (["int8"] if args.quick else ["int8", "fp32"])
    section = run(folder, precisions, sst2_dev()[0], args.concurrency, seconds, args.rounds)
    table = "\n".join(markdown(section)) + "\n"
    print("\n" + table)
    if args.output:
        args.output.write_text(json.dumps(section, indent=2) + "\n")
        args.output.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
