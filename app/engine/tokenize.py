"""Text -> token ids, with the fast tokenizer saved beside the model (no transformers needed).

Encoding is pure and thread-safe: the tokenizer's settings are fixed at construction, so one
instance serves every request from the tokenization threads.

A text is tokenized once per request, whatever is built from it: pairs (zero-shot) are joined
from the text's ids and each hypothesis's ids, windows (token classification) are cut from the
text's ids. A long text is tokenized in pieces (`next_cut`), so that work can stop once the
tokens it needs are there (truncation), once it is known to be too long, or when its request
has gone; where the tokenizer allows it, those pieces give exactly the ids of the whole text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, pre_tokenizers

TextInput = str | tuple[str, str]
DECODE_CHUNK = 64  # sequences per decode_batch call
CUT_AT = " \t\n\r"  # a piece of a long text starts at one of these, right after a character that is not whitespace
_CUT_AFTER = re.compile(r"(?<=\S)[ \t\n\r]")

# transformers' clean_up_tokenization, applied to decoded text when the tokenizer config asks for it.
_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


@dataclass(frozen=True)
class Encoded:
    ids: np.ndarray  # int64, special tokens included

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Tokens:
    """A text's own tokens (no special tokens), or its first ones when `complete` is False."""

    ids: np.ndarray  # int64
    offsets: np.ndarray | None = None  # [n, 2] character offsets into the text, when asked for
    complete: bool = True  # False: the text has more tokens than these
    words: np.ndarray | None = None  # with the offsets: each token's word, as the tokenizer's pre-tokenizer split them

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
        self._whole = Tokenizer.from_file(str(tokenizer_file))
        self._whole.no_padding()
        self._whole.no_truncation()
        self.mask_token = _token_name(config.get("mask_token"), "<mask>")
        self.mask_id = self._truncating.token_to_id(self.mask_token)
        pad_id = self._truncating.token_to_id(_token_name(config.get("pad_token"), "<pad>"))
        self.pad_id = 1 if pad_id is None else pad_id
        self._cleanup = bool(config.get("clean_up_tokenization_spaces", False))
        self._vocab = self._truncating.get_vocab(with_added_tokens=True)
        self.vocab_size = self._truncating.get_vocab_size(with_added_tokens=True)  # read once: each call walks the whole vocabulary
        added = list(self._whole.get_added_tokens_decoder().values())
        byte_level = isinstance(self._whole.pre_tokenizer, pre_tokenizers.ByteLevel)
        # No normalizer means every input byte is covered by some token, so a token count can be bounded from
        # the bytes alone (see fewest_tokens); a normalizer may delete or merge input, so then nothing is.
        self._bytes_per_token = _most_bytes_per_token(self._vocab, {token.content for token in added}, byte_level)
        self._bounded = self._whole.normalizer is None
        # Where a text can be tokenized in pieces with the ids of the whole: byte-level BPE splits text with
        # GPT-2's pattern, under which no pre-token runs from a character that is not whitespace into the
        # whitespace after it, so cutting there changes no pre-token, and BPE works within one. Added tokens
        # are found first: one that takes the whitespace after it (rstrip) or holds some could span a cut.
        self.cuttable = (
            self._bounded and byte_level and bool(getattr(self._whole.pre_tokenizer, "use_regex", False))
            and not any(token.rstrip or token.single_word or any(c.isspace() for c in token.content) for token in added)
        )
        self._prefix, self._suffix = self._special_ends()
        self._ends = np.asarray(self._prefix, dtype=np.int64), np.asarray(self._suffix, dtype=np.int64)
        self._pair_ends = self._pair_layout()
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

    def _pair_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The special tokens the post-processor puts before, between and after a pair (<s> A </s></s> B </s>)."""
        whole = self._whole.encode("a", "b").ids
        first = self._whole.encode("a", add_special_tokens=False).ids
        second = self._whole.encode("b", add_special_tokens=False).ids
        for start in range(len(whole) - len(first) + 1):
            if whole[start : start + len(first)] != first:
                continue
            for middle in range(start + len(first), len(whole) - len(second) + 1):
                if whole[middle : middle + len(second)] == second:
                    parts = whole[:start], whole[start + len(first) : middle], whole[middle + len(second) :]
                    return tuple(np.asarray(part, dtype=np.int64) for part in parts)
        raise ValueError("the tokenizer's pair template does not hold both texts in order")

    def encode(self, inputs: Sequence[TextInput], *, truncate: bool = True) -> list[Encoded]:
        """Ids of each input with its special tokens: cut to max_seq_len when `truncate` (the longer text of a pair
        first), else whole (the caller refuses what is too long). Never reads the tokenizer's overflow: for a long
        input that is thousands of Python objects."""
        encodings = (self._truncating if truncate else self._whole).encode_batch(list(inputs))
        return [Encoded(np.asarray(e.ids, dtype=np.int64)) for e in encodings]

    def content(self, texts: Sequence[str], *, offsets: bool = False, most: int | None = None) -> list[Tokens]:
        """Each text's own tokens (its first `most`, complete False where it has more); with `offsets`, where each
        token is in its text. What is cut off never becomes Python objects: for a megabyte, a million of them."""
        encodings = self._whole.encode_batch(list(texts), add_special_tokens=False)
        found = []
        for e in encodings:
            complete = most is None or len(e) <= most
            if not complete:
                e.truncate(most)
            where = np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) if offsets else None
            words = np.asarray([-1 if w is None else w for w in e.word_ids], dtype=np.int64) if offsets else None
            found.append(Tokens(np.asarray(e.ids, dtype=np.int64), where, complete, words))
        return found

    def next_cut(self, text: str, start: int, size: int) -> int:
        """Where the piece of `text` that starts at `start` ends: about `size` characters on, at a place where
        the pieces' tokens are those of the whole text; the end of the text when there is none."""
        if not self.cuttable or len(text) - start <= size:
            return len(text)
        cut = _last_cut(text, start, start + size)
        if cut is None:  # one unbroken run: the piece goes on to the next place after it
            found = _CUT_AFTER.search(text, start + size + 1)
            cut = found.start() if found else len(text)
        return cut

    def single(self, ids: np.ndarray) -> np.ndarray:
        """A text's tokens as one model input: special tokens around them."""
        return np.concatenate([self._ends[0], ids, self._ends[1]])

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Two texts' tokens as one model input, as the tokenizer's pair template joins them."""
        before, between, after = self._pair_ends
        return np.concatenate([before, first, between, second, after])

    @property
    def special_tokens_per_text(self) -> int:
        return len(self._prefix) + len(self._suffix)

    @property
    def special_tokens_per_pair(self) -> int:
        return sum(len(part) for part in self._pair_ends)

    @property
    def room(self) -> int:
        """Tokens of text one model input holds beside its special tokens."""
        return self.max_seq_len - self.special_tokens_per_text

    def window_count(self, tokens: int, stride: int | None, room: int | None = None) -> int:
        """How many windows `windows` cuts from a text of `tokens` tokens (stride < room), `room` tokens of it each
        (default: a single text's room; the second text of a pair has less)."""
        room = self.room if room is None else room
        if stride is None or tokens <= room:
            return 1
        return math.ceil((tokens - room) / (room - stride)) + 1

    def second_at(self, first: int) -> int:
        """Where the second text of a pair starts in the model input, after `first` tokens of the first text."""
        before, between, _ = self._pair_ends
        return len(before) + first + len(between)

    def most_tokens(self, windows: int, stride: int) -> int:
        """The most tokens a text can have and still make at most `windows` windows (stride < room)."""
        return self.room + (windows - 1) * (self.room - stride)

    def windows(self, tokens: Tokens, *, stride: int | None) -> list[Window]:
        """The text's tokens whole (stride None: the caller refuses them if too many), or cut into windows of
        max_seq_len tokens that overlap by `stride`, as the tokenizer's own truncation with a stride cuts them."""
        count, step = self.window_count(len(tokens), stride), self.room - (stride or 0)
        spans = [(index * step, min(index * step + self.room, len(tokens))) for index in range(count)]
        return [self._window(tokens.ids[a:b], tokens.offsets[a:b]) for a, b in spans]

    def _window(self, ids: np.ndarray, offsets: np.ndarray) -> Window:
        before, after = len(self._prefix), len(self._suffix)
        return Window(
            ids=self.single(ids),
            offsets=np.concatenate([np.zeros((before, 2), np.int64), offsets, np.zeros((after, 2), np.int64)]),
            special=np.concatenate([np.ones(before, bool), np.zeros(len(ids), bool), np.ones(after, bool)]),
        )

    def tokens_to_string(self, tokens: Sequence[str]) -> str:
        """transformers' convert_tokens_to_string: the decoder on token strings, no clean-up."""
        decoder = self._truncating.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def fewest_tokens(self, *parts: str) -> int:
        """The fewest tokens the text `parts` make together can have, decided without tokenizing it (0: unknown).

        Every token covers at most `_bytes_per_token` bytes of input that are not whitespace (an
        added token such as `<mask>` may also swallow the whitespace before it), so that many bytes
        of non-whitespace need at least bytes / _bytes_per_token tokens. A megabyte-long word is
        refused in microseconds instead of tokenized for half a second.
        """
        if not self._bounded or 4 * sum(len(part) for part in parts) < self._bytes_per_token:
            return 0  # at most 4 bytes a character: too short to need two tokens
        solid = sum(len("".join(part.split()).encode("utf-8")) for part in parts)
        return math.ceil(solid / self._bytes_per_token)

    def surely_too_long(self, text: TextInput) -> bool:
        """True when `text` (or a pair) certainly has more than max_seq_len tokens, decided without tokenizing it."""
        return self.fewest_tokens(*(text if isinstance(text, tuple) else (text,))) > self.max_seq_len

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


def _most_bytes_per_token(vocab: dict[str, int], added: set[str], byte_level: bool) -> int:
    """The most input bytes one token covers. A byte-level vocabulary spells each input byte as one character,
    so its entries cover as many bytes as they have characters; added tokens are matched as they are written."""
    return max(len(token) if byte_level and token not in added else len(token.encode("utf-8")) for token in vocab)


def _last_cut(text: str, start: int, limit: int) -> int | None:
    """The last place in (start, limit] where a piece may begin: whitespace right after a character that is not."""
    end = limit + 1
    while True:
        cut = max(text.rfind(space, start + 1, end) for space in CUT_AT)
        if cut < 0:
            return None
        if not text[cut - 1].isspace():
            return cut
        end = cut  # inside a run of whitespace: its start is what counts


def _token_name(value, default: str) -> str:
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value) if value else default
