"""CLIP's byte-level BPE tokenizer: lower-cased, ftfy-fixed, HTML-unescaped text -> token ids.

The vocabulary is OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` beside this file (MIT licence, see
``clip/README.md``): 256 byte symbols, the same with an end-of-word mark, 48,894 merges and the two
special tokens, 49,408 ids in all.
"""

from __future__ import annotations

import functools
import gzip
import html
from importlib import resources
from pathlib import Path

import torch

VOCAB_FILE = Path(str(resources.files(__package__) / "bpe_simple_vocab_16e6.txt.gz"))  # package data
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2  # the merges OpenAI's vocabulary uses (the file holds more)
# The special tokens are not in the word pattern: "<|endoftext|>" typed in a prompt is text, not a token
# that would end the prompt early (OpenAI's tokenizer makes it the special token; open_clip spells its own
# special tokens "<end_of_text>" and treats OpenAI's spelling as text, as here).
WORD_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"


@functools.cache
def _words():
    """The compiled word pattern (``regex`` and ``ftfy`` are imported when text is first tokenized, not with the
    package: the scripts that never read text start faster)."""
    import regex

    return regex.compile(WORD_PATTERN, regex.IGNORECASE)


class ContextLengthError(ValueError):
    """A text whose tokens do not fit the context and truncation was not asked for."""


@functools.cache
def byte_symbols() -> dict[int, str]:
    """A printable unicode character for each byte value: printable Latin-1 bytes stand for themselves, the
    others (controls, space, ...) take the characters from U+0100 on, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in symbols)
    symbols.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return symbols


def clean(text: str) -> str:
    """ftfy's fixes, HTML entities unescaped (twice, as OpenAI), runs of whitespace made one space, lower case."""
    import ftfy
    import regex

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


class SimpleTokenizer:
    """Byte-pair encoding with OpenAI's CLIP vocabulary."""

    def __init__(self, vocab_path: str | Path = VOCAB_FILE) -> None:
        lines = gzip.open(vocab_path, "rt", encoding="utf-8").read().split("\n")
        merges = [tuple(line.split()) for line in lines[1: NUM_MERGES + 1]]
        base = list(byte_symbols().values())
        vocab = base + [s + "</w>" for s in base] + ["".join(pair) for pair in merges] + [SOT, EOT]
        self.encoder = {symbol: i for i, symbol in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_decoder = {s: b for b, s in byte_symbols().items()}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, list[str]] = {}

    def bpe(self, word: str) -> list[str]:
        """One pre-tokenised word (in byte symbols) -> its BPE symbols, the last carrying ``</w>``."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end tokens."""
        symbols = byte_symbols()
        ids = []
        for word in _words().findall(clean(text)):
            encoded = "".join(symbols[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(encoded))
        return ids

    def decode(self, ids: list[int]) -> str:
        """The (cleaned) text of token ids; end-of-word marks become spaces."""
        raw = bytearray()
        for i in ids:
            symbol = self.decoder[i]
            if symbol in (SOT, EOT):
                continue
            word_end = symbol.endswith("</w>")
            raw.extend(self.byte_decoder[c] for c in symbol.removesuffix("</w>"))
            raw.extend(b" " if word_end else b"")
        return raw.decode("utf-8", errors="replace").strip()


@functools.cache
def default_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Token ids ``[N, context_length]`` (int64, zero-padded), each text framed by start and end tokens.

    A text that does not fit raises :class:`ContextLengthError`, unless ``truncate``: then it is cut and
    its last id made the end token.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = default_tokenizer()
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot, *tok.encode(text), tok.eot]
        if len(ids) > context_length:
            if not truncate:
                raise ContextLengthError(f"{text[:60]!r}{'...' if len(text) > 60 else ''} is {len(ids)} tokens "
                                         f"long; the context holds {context_length}")
            ids = ids[:context_length]
            ids[-1] = tok.eot
        out[row, : len(ids)] = torch.tensor(ids)
    return out
