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
DECODE_CHUNK = 64  # sequences per decode_batch call

# transformers' clean_up_tokenization, applied to decoded text when the tokenizer config asks for it.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int64, special tokens included

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Window:
    """A text's tokens as one model input, with where each came from (token classification)."""

    ids: np.ndarray  # int64, special tokens included
    offsets: np.ndarray  # [n, 2] character offsets into the text; (0, 0) for special tokens
    special: np.ndarray  # bool: special tokens, which have no place in the text

    def __len__(self) -> int:
        return len(self.ids)


class TextEncoder:
    def __init__(self, tokenizer_file: Path, max_seq_len: int, tokenizer_config: dict | None = None) -> None:
        config = tokenizer_config or {}
        self.max_seq_len = max_seq_len
        self._truncating = Tokenizer.from_file(str(tokenizer_file))
        self._truncating.no_padding()  # the batcher pads, per batch, to the longest member
        self._truncating.enable_truncation(max_length=max_seq_len)
        self._first_only = Tokenizer.from_file(str(tokenizer_file))  # pairs: only the first text is cut (zero-shot)
        self._first_only.no_padding()
        self._first_only.enable_truncation(max_length=max_seq_len, strategy="only_first")
        self._whole = Tokenizer.from_file(str(tokenizer_file))
        self._whole.no_padding()
        self._whole.no_truncation()
        self.mask_token = _token_name(config.get("mask_token"), "<mask>")
        self.mask_id = self._truncating.token_to_id(self.mask_token)
        pad_id = self._truncating.token_to_id(_token_name(config.get("pad_token"), "<pad>"))
        self.pad_id = 1 if pad_id is None else pad_id
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False))
        self._vocab = self._truncating.get_vocab(with_added_tokens=True)
        self.vocab_size = self._truncating.get_vocab_size(with_added_tokens=True)  # 20 ms a call for 50k tokens
        # No normalizer means every input byte is covered by some token, so a token count can be bounded from
        # the bytes alone (see surely_too_long); a normalizer may delete or merge input, so then nothing is.
        self._bytes_per_token = max(len(token.encode("utf-8")) for token in self._vocab)
        self._bounded = self._truncating.normalizer is None
        self._prefix, self._suffix = self._special_ends()
        self.unk_id = self._truncating.token_to_id(_token_name(config.get("unk_token"), "<unk>"))
        # transformers' token-classification rule for telling a word's first token from the rest: a BPE model
        # with a continuing-subword prefix says so itself; byte-level BPE (RoBERTa's) has none.
        self.marks_subwords = bool(getattr(self._whole.model, "continuing_subword_prefix", None))

    def _special_ends(self) -> tuple[list[int], list[int]]:
        """The special tokens the post-processor puts before and after one text (<s> and </s> for RoBERTa)."""
        whole = self._whole.encode("a").ids
        content = self._whole.encode("a", add_special_tokens=False).ids
        for start in range(len(whole) - len(content) + 1):
            if whole[start : start + len(content)] == content:
                return whole[:start], whole[start + len(content) :]
        return [], []

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool | str = True) -> list[Encoded]:
        """Ids of each input: cut to max_seq_len when `truncate` (longest text of a pair first; "only_first": only
        the first text of a pair), else whole (the caller refuses what is too long).

        Never reads the tokenizer's overflow: for a long input that is thousands of Python objects.
        """
        if truncate == "only_first":
            try:
                encodings = self._first_only.encode_batch(list(inputs))
            except Exception:  # the second text alone is too long: tokenizers raises a plain Exception
                encodings = self._whole.encode_batch(list(inputs))  # the caller refuses what is too long
        else:
            encodings = (self._truncating if truncate else self._whole).encode_batch(list(inputs))
        return [Encoded(np.asarray(e.ids, dtype=np.int64)) for e in encodings]

    def windows(self, text: str, *, stride: int | None) -> list[Window]:
        """The text whole (stride None: the caller refuses it if too long), or cut into windows of max_seq_len
        tokens that overlap by `stride`, as the tokenizer's own truncation with a stride cuts them."""
        content = self._whole.encode(text, add_special_tokens=False)
        ids, offsets, special = content.ids, content.offsets, content.special_tokens_mask
        room = self.max_seq_len - len(self._prefix) - len(self._suffix)
        if stride is None or len(ids) <= room:
            spans = [(0, len(ids))]
        else:
            step = room - stride  # stride < room: checked by the caller
            spans = []
            for start in range(0, len(ids), step):
                spans.append((start, min(start + room, len(ids))))
                if spans[-1][1] == len(ids):
                    break
        return [self._window(ids[a:b], offsets[a:b], special[a:b]) for a, b in spans]

    def _window(self, ids, offsets, special) -> Window:
        before, after = len(self._prefix), len(self._suffix)
        return Window(
            ids=np.asarray(self._prefix + list(ids) + self._suffix, dtype=np.int64),
            offsets=np.asarray([(0, 0)] * before + list(offsets) + [(0, 0)] * after, dtype=np.int64).reshape(-1, 2),
            special=np.asarray([1] * before + list(special) + [1] * after, dtype=bool),
        )

    @property
    def special_tokens_per_text(self) -> int:
        return len(self._prefix) + len(self._suffix)

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """transformers' convert_tokens_to_string: the decoder on token strings, no clean-up."""
        decoder = self._truncating.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def surely_too_long(self, text: TextInput) -> bool:
        """True when `text` is certainly more than max_seq_len tokens, decided without tokenizing it.

        Every token covers at most `_bytes_per_token` bytes of input that are not whitespace (an added
        token such as `<mask>` may also swallow the whitespace before it), so that many bytes of
        non-whitespace need at least bytes / _bytes_per_token tokens. A megabyte-long word is refused
        in microseconds instead of tokenized for half a second.
        """
        if not self._bounded:
            return False
        texts = text if isinstance(text, tuple) else (text,)
        limit = self.max_seq_len * self._bytes_per_token
        if 4 * sum(len(part) for part in texts) <= limit:  # at most 4 bytes a character: surely within
            return False
        solid = sum(len("".join(part.split()).encode("utf-8")) for part in texts)
        return solid > limit

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool) -> str:
        return self._clean(self._truncating.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def decode_batch(self, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool) -> list[str]:
        """`decode` of each sequence. tokenizers' `decode` holds the GIL, `decode_batch` lets it go while it
        works; in chunks, because turning the ids into Rust's form holds it too, for as long as they are many."""
        texts: list[str] = []
        for start in range(0, len(sequences), DECODE_CHUNK):
            chunk = [list(ids) for ids in sequences[start : start + DECODE_CHUNK]]
            texts += self._truncating.decode_batch(chunk, skip_special_tokens=skip_special_tokens)
        return [self._clean(text) for text in texts]

    def _clean(self, text: str) -> str:
        if self._cleanup:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text

    def token_id(self, token: str) -> int | None:
        """The id of a vocabulary entry spelled exactly so (byte-level: ' door' is 'Ġdoor')."""
        return self._vocab.get(token)

    def first_subtoken(self, word: str) -> int | None:
        ids = self._whole.encode(word, add_special_tokens=False).ids
        return ids[0] if ids else None

    def id_to_token(self, token_id: int) -> str | None:
        return self._truncating.id_to_token(token_id)


def _token_name(value, default: str) -> str:
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value) if value else default
