"""Text -> token ids, with the fast tokenizer saved beside the model (no transformers needed).

Encoding is pure and thread-safe: the tokenizer's settings are fixed at construction,
so one instance serves every request from the tokenization threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TextInput = str | tuple[str, str]

# transformers' clean_up_tokenization, applied to decoded text when the tokenizer config asks for it.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int64, special tokens included, at most max_seq_len long
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class TextEncoder:
    def __init__(self, tokenizer_file: Path, max_seq_len: int, tokenizer_config: dict | None = None) -> None:
        config = tokenizer_config or {}
        self.max_seq_len = max_seq_len
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.no_padding()  # the batcher pads, per batch, to the longest member
        self._tokenizer.enable_truncation(max_length=max_seq_len)
        self._untruncated = Tokenizer.from_file(str(tokenizer_file))  # only to measure refused inputs
        self._untruncated.no_padding()
        self._untruncated.no_truncation()
        self.mask_token = _token_name(config.get("mask_token"), "<mask>")
        self.mask_id = self._tokenizer.token_to_id(self.mask_token)
        pad_id = self._tokenizer.token_to_id(_token_name(config.get("pad_token"), "<pad>"))
        self.pad_id = 1 if pad_id is None else pad_id
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False))
        self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, inputs: Sequence[TextInput]) -> list[Encoded]:
        encodings = self._tokenizer.encode_batch(list(inputs))
        return [Encoded(np.asarray(e.ids, dtype=np.int64), truncated=bool(e.overflowing)) for e in encodings]

    def count_tokens(self, text: TextInput) -> int:
        """Length without truncation, for the error that says how long an input was."""
        encoding = self._untruncated.encode(*text) if isinstance(text, tuple) else self._untruncated.encode(text)
        return len(encoding.ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self._cleanup:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def token_id(self, token: str) -> int | None:
        """The id of a vocabulary entry spelled exactly so (byte-level: ' door' is 'Ġdoor')."""
        return self._vocab.get(token)

    def first_subtoken(self, word: str) -> int | None:
        ids = self._tokenizer.encode(word, add_special_tokens=False).ids
        return ids[0] if ids else None

    def id_to_token(self, token_id: int) -> str | None:
        return self._tokenizer.id_to_token(token_id)


def _token_name(value, default: str) -> str:
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value) if value else default
