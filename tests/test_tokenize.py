from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from app.engine.tokenize import TextEncoder


def make_encoder(folder, max_seq_len):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return TextEncoder(folder / "tokenizer.json", max_seq_len=max_seq_len, tokenizer_config=config)


@pytest.fixture(scope="module")
def encoder(exported_mlm):
    return make_encoder(exported_mlm, 64)


@pytest.fixture(scope="module")
def reference(exported_mlm):
    return AutoTokenizer.from_pretrained(str(exported_mlm))


def test_ids_equal_transformers_for_texts_and_pairs(encoder, reference):
    texts = ["The film was <mask>.", "Unicode: naïve café, Tōkyō 🙂.", "a"]
    for text, encoded in zip(texts, encoder.encode(texts)):
        assert encoded.ids.tolist() == reference(text)["input_ids"]
        assert encoded.ids.dtype == np.int64
    (pair,) = encoder.encode([("the plot", "was dull")])
    assert pair.ids.tolist() == reference("the plot", "was dull")["input_ids"]


def test_mask_and_pad_come_from_the_tokenizer_config(encoder, reference):
    assert encoder.mask_token == "<mask>" and encoder.mask_id == reference.mask_token_id
    assert encoder.pad_id == reference.pad_token_id


def test_long_inputs_are_truncated_or_kept_whole_to_be_measured(exported_mlm, reference):
    encoder = make_encoder(exported_mlm, 16)
    text = "the film was good and the acting was brilliant " * 5
    (encoded,) = encoder.encode([text])
    assert len(encoded) == 16
    assert encoded.ids[-1] == reference.eos_token_id  # still closed by </s>
    (whole,) = encoder.encode([text], truncate=False)
    assert whole.ids.tolist() == reference(text)["input_ids"] and len(whole) > 16


def test_too_long_is_decided_from_bytes_only_when_it_is_certain(exported_mlm, reference):
    encoder = make_encoder(exported_mlm, 16)
    word = "x" * 10_000
    assert encoder.surely_too_long(word) and encoder.surely_too_long(("a", word))
    assert len(reference(word)["input_ids"]) > 16
    # Whitespace can vanish into an added token (<mask> strips what is left of it): never counted.
    spaces = " " * 10_000 + "<mask>"
    assert not encoder.surely_too_long(spaces)
    assert len(reference(spaces)["input_ids"]) <= 16
    assert not encoder.surely_too_long("the film was good")


def test_decode_matches_transformers(encoder, reference):
    ids = reference("The ending was brilliant, sadly.")["input_ids"]
    assert encoder.decode(ids, skip_special_tokens=True) == reference.decode(ids, skip_special_tokens=True)
    assert encoder.decode(ids, skip_special_tokens=False) == reference.decode(ids)


def test_batch_decoding_equals_one_by_one_across_chunks(encoder, reference):
    sequences = [reference(f"The film number {i} was brilliant, sadly.")["input_ids"] for i in range(150)]
    for skip in (True, False):
        assert encoder.decode_batch(sequences, skip_special_tokens=skip) == [
            encoder.decode(ids, skip_special_tokens=skip) for ids in sequences
        ]


ROBERTA_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "roberta-base-tokenizer"
BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "books" / "books_clean.txt"
ODD = ["<mask>", " <mask>", "<s>", "</s>", "'s", "'ll", " '", "é", "e\u0301", "\u00a0", "\u3000", "\u2028", "\x85", "🙂",
       "  \n", "\r\n", "\t", "x1", "...", "--", "Tōkyō", "  "]


@pytest.fixture(scope="module")
def roberta(tmp_path_factory):
    """roberta-base's own tokenizer (../shared/data), as an export writes it."""
    from transformers import RobertaTokenizerFast

    if not ROBERTA_TOKENIZER.is_dir():
        pytest.skip("../shared/data/roberta-base-tokenizer is not there")
    folder = tmp_path_factory.mktemp("roberta-tokenizer")
    RobertaTokenizerFast(vocab_file=str(ROBERTA_TOKENIZER / "vocab.json"), merges_file=str(ROBERTA_TOKENIZER / "merges.txt")).save_pretrained(folder)
    return make_encoder(folder, 512)


def in_pieces(encoder: TextEncoder, text: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    ids, offsets, start = [], [np.zeros((0, 2), np.int64)], 0
    while start < len(text):
        end = encoder.next_cut(text, start, size)
        assert end > start
        (piece,) = encoder.content([text[start:end]], offsets=True)
        ids.append(piece.ids)
        offsets.append(piece.offsets + start)
        start = end
    return np.concatenate([np.zeros(0, np.int64), *ids]), np.concatenate(offsets)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(parts=st.lists(st.one_of(st.sampled_from(ODD), st.text(max_size=12)), max_size=60), size=st.integers(1, 64))
def test_a_text_in_pieces_has_the_ids_and_offsets_of_the_whole(roberta, encoder, parts, size):
    text = "".join(parts)
    for each in (roberta, encoder):
        assert each.cuttable
        (whole,) = each.content([text], offsets=True)
        ids, offsets = in_pieces(each, text, size)
        assert ids.tolist() == whole.ids.tolist() and offsets.tolist() == whole.offsets.tolist()


def test_book_text_in_pieces_has_the_ids_of_the_whole(roberta):
    if not BOOKS.is_file():
        pytest.skip("../shared/data/books is not there")
    book = BOOKS.read_text(encoding="utf-8")[:300_000]
    (whole,) = roberta.content([book], offsets=True)
    ids, offsets = in_pieces(roberta, book, 8192)
    assert ids.tolist() == whole.ids.tolist() and offsets.tolist() == whole.offsets.tolist()
    assert roberta.next_cut(book, 0, 8192) <= 8193  # pieces of about the size asked for
    word = "x" * 20_000  # nowhere to cut: one piece
    assert roberta.next_cut(word + " a", 0, 8192) == len(word) and roberta.next_cut(word, 0, 8192) == len(word)


def test_a_tokenizer_with_a_normalizer_is_never_cut(tmp_path, exported_mlm):
    from tokenizers import Tokenizer, normalizers

    tokenizer = Tokenizer.from_file(str(exported_mlm / "tokenizer.json"))
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    normalizing = TextEncoder(tmp_path / "tokenizer.json", max_seq_len=64)
    assert not normalizing.cuttable and normalizing.next_cut("a b " * 10_000, 0, 100) == 40_000
    assert normalizing.fewest_tokens("x" * 100_000) == 0  # a normalizer may delete input: nothing is certain


def test_pairs_are_joined_as_the_tokenizer_joins_them(roberta, encoder):
    for each in (roberta, encoder):
        (first, second) = each.content(["The plot was dull.", "This example is <mask>."])
        (whole,) = each.encode([("The plot was dull.", "This example is <mask>.")], truncate=False)
        assert each.pair(first.ids, second.ids).tolist() == whole.ids.tolist()
        assert each.special_tokens_per_pair == len(whole) - len(first) - len(second)


@pytest.mark.parametrize("stride", [None, 0, 5, 61])
def test_windows_are_counted_before_they_are_cut(encoder, stride):
    text = "the film was good and the acting was brilliant " * 12
    (tokens,) = encoder.content([text], offsets=True)
    windows = encoder.windows(tokens, stride=stride)
    assert len(windows) == encoder.window_count(len(tokens), stride)
    if stride is not None:
        assert len(tokens) <= encoder.most_tokens(len(windows), stride)
        assert len(tokens) > encoder.most_tokens(len(windows) - 1, stride) if len(windows) > 1 else True
        assert all(len(window) <= 64 for window in windows) and windows[-1].offsets[-2][1] == len(text)  # the last window reaches the end


def test_the_fewest_tokens_is_never_more_than_there_are(roberta):
    for text in ["x" * 10_000, "ab " * 5000, "=" * 5000, "🙂" * 3000, " " * 9000 + "<mask>", "a"]:
        (tokens,) = roberta.content([text])
        assert roberta.fewest_tokens(text) <= len(tokens)
    assert roberta.fewest_tokens("x" * 100_000) > 512  # roberta's longest entry covers 128 bytes
