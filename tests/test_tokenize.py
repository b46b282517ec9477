from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from app.tokenize import TextEncoder


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
