"""Tokenizers: text <-> int32 ids, with the byte length each id stands for.

Every tokenizer owns `vocab_size` ids, its BOS/EOS/PAD specials included. The
diffusion MASK id is `vocab_size` itself: it belongs to the model, and `decode`
drops it like any other id outside the vocabulary.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import tokenizers as hf

from mdm.errors import ConfigError, DataError


class Tokenizer(abc.ABC):
    """Base class. Subclasses set the attributes below in `__init__`.

    Attributes:
      vocab_size: number of ids the network can predict, specials included.
      bos_id, eos_id, pad_id: distinct special ids, all < vocab_size.
      token_bytes: int32 [vocab_size]; UTF-8 byte length of the text each id
        stands for (0 for specials). bits/byte = nats / ln 2 / sum(token_bytes[targets]).
    """

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int
    token_bytes: np.ndarray

    @abc.abstractmethod
    def encode(self, text: str | bytes) -> np.ndarray:
        """Text (bytes are read as UTF-8) -> int32 [num_tokens], without BOS/EOS."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """1-D ids -> text; specials and ids outside [0, vocab_size) are skipped."""

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        """`encode` over many documents; subclasses may do it in parallel."""
        return [self.encode(text) for text in texts]

    def fingerprint(self) -> str:
        """sha256 hex of what fixes the ids: the kind, vocabulary size, specials and byte lengths
        (a HuggingFace file adds its whole JSON). Token files record it; readers compare it."""
        h = hashlib.sha256(f"{type(self).__name__}:{self.vocab_size}:{self.bos_id}:{self.eos_id}:{self.pad_id}".encode())
        h.update(np.asarray(self.token_bytes, np.int32).tobytes())
        h.update(self._definition())
        return h.hexdigest()

    def _definition(self) -> bytes:
        """Bytes that define the id mapping beyond the attributes (none for built-in tokenizers)."""
        return b""

    def _text_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The ids of `ids` that stand for text: in range and not special."""
        ids = np.asarray(ids, dtype=np.int64)
        keep = (ids >= 0) & (ids < self.vocab_size)
        keep &= (ids != self.bos_id) & (ids != self.eos_id) & (ids != self.pad_id)
        return ids[keep]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _as_str(text: str | bytes) -> str:
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


class ByteTokenizer(Tokenizer):
    """ids 0..255 are the UTF-8 bytes; 256 = BOS, 257 = EOS, 258 = PAD."""

    def __init__(self) -> None:
        self.vocab_size = 259
        self.bos_id, self.eos_id, self.pad_id = 256, 257, 258
        self.token_bytes = _frozen(np.array([1] * 256 + [0] * 3, dtype=np.int32))

    def encode(self, text: str | bytes) -> np.ndarray:
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        data = self._text_ids(ids).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")


class SymbolTokenizer(Tokenizer):
    """The synthetic language: ids 0..V-1 are symbols written 'a'.., then BOS, EOS, PAD.

    A symbol counts as one byte, so bits/byte equals bits/symbol.
    """

    def __init__(self, num_symbols: int) -> None:
        if not 1 <= num_symbols <= 26:
            raise ConfigError(f"data.synthetic_vocab={num_symbols} is out of range: use 1..26 symbols")
        self.num_symbols = num_symbols
        self.vocab_size = num_symbols + 3
        self.bos_id, self.eos_id, self.pad_id = num_symbols, num_symbols + 1, num_symbols + 2
        self.token_bytes = _frozen(np.array([1] * num_symbols + [0] * 3, dtype=np.int32))

    def encode(self, text: str | bytes) -> np.ndarray:
        ids = [ord(c) - ord("a") for c in _as_str(text)]
        for c, i in zip(_as_str(text), ids):
            if not 0 <= i < self.num_symbols:
                last = chr(ord("a") + self.num_symbols - 1)
                raise DataError(f"{c!r} is not a symbol of the synthetic language: use only 'a'..{last!r}")
        return np.array(ids, dtype=np.int32)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return "".join(chr(ord("a") + int(i)) for i in self._text_ids(ids))


# Special tokens an HF tokenizer file may already define, in order of preference.
_SPECIAL_NAMES = {
    "bos": ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>", "[BOS]"),
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[EOS]"),
    "pad": ("<pad>", "<|pad|>", "<|padding|>", "[PAD]"),
}
_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _uses_byte_level(component: Any) -> bool:
    """Whether a serialized HF decoder (possibly a Sequence) contains ByteLevel."""
    if isinstance(component, dict):
        if component.get("type") == "ByteLevel":
            return True
        return any(_uses_byte_level(v) for v in component.get("decoders", []))
    return False


def _piece_bytes(piece: str, byte_level: bool) -> int:
    """UTF-8 length of the text a vocabulary piece stands for.

    Byte-level BPE writes every byte as one character, so its length is the
    number of characters (this stays exact for pieces holding part of a UTF-8
    character, which decoding the piece alone would not). SentencePiece-style
    pieces use '▁' for a space and '<0xNN>' for a fallback byte.
    """
    if byte_level:
        return len(piece)
    if _BYTE_FALLBACK.fullmatch(piece):
        return 1
    return len(piece.replace("\u2581", " ").encode("utf-8"))


def _special_ids(vocab: dict[str, int], file_size: int) -> tuple[int, int, int]:
    """(bos, eos, pad): the file's own tokens when present, else ids from `file_size` up."""
    chosen: dict[str, int] = {}
    next_id = file_size
    for role, names in _SPECIAL_NAMES.items():
        found = [vocab[n] for n in names if n in vocab and vocab[n] not in chosen.values()]
        if found:
            chosen[role] = found[0]
        else:
            chosen[role], next_id = next_id, next_id + 1
    return chosen["bos"], chosen["eos"], chosen["pad"]


def _hf_token_bytes(tok: hf.Tokenizer, vocab_size: int, skip: set[int]) -> np.ndarray:
    """int32 [vocab_size]: UTF-8 length of each id of `tok`; 0 for `skip` and new ids."""
    byte_level = _uses_byte_level(json.loads(tok.to_str()).get("decoder"))
    added = tok.get_added_tokens_decoder()
    lengths = np.zeros(vocab_size, dtype=np.int32)
    for i in range(vocab_size):
        if i in skip or (i in added and added[i].special):
            continue
        if i in added:
            lengths[i] = len(added[i].content.encode("utf-8"))
        elif (piece := tok.id_to_token(i)) is not None:
            lengths[i] = _piece_bytes(piece, byte_level)
    return lengths


class HFTokenizer(Tokenizer):
    """A HuggingFace `tokenizers` JSON file (GPT-2 / Llama style).

    BOS/EOS/PAD reuse the file's own special tokens when it has them (see
    `_SPECIAL_NAMES`); missing ones get new ids right after the file's vocabulary.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        fix = f"set data.tokenizer to 'bytes', {', '.join(repr(n) for n in BUILTIN)} or a HuggingFace tokenizer.json path"
        if os.path.isdir(path):
            inside = os.path.join(path, "tokenizer.json")
            example = f" (e.g. --config.data.tokenizer={inside})" if os.path.isfile(inside) else ""
            raise DataError(f"data.tokenizer={path!r} is a directory: give the tokenizer.json file itself{example}, or 'bytes'")
        if not os.path.isfile(path):
            raise DataError(f"tokenizer file {path!r} does not exist: {fix}")
        try:
            self._hf = hf.Tokenizer.from_file(path)
        except Exception as e:  # the Rust loader raises bare Exception
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(f"{path!r} is not a HuggingFace tokenizers file ({reason}): {fix}") from e
        vocab = self._hf.get_vocab(with_added_tokens=True)
        file_size = max(vocab.values()) + 1
        self.bos_id, self.eos_id, self.pad_id = _special_ids(vocab, file_size)
        self.vocab_size = max(file_size, self.bos_id + 1, self.eos_id + 1, self.pad_id + 1)
        specials = {self.bos_id, self.eos_id, self.pad_id}
        self.token_bytes = _frozen(_hf_token_bytes(self._hf, self.vocab_size, specials))

    def encode(self, text: str | bytes) -> np.ndarray:
        ids = self._hf.encode(_as_str(text), add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str | bytes]) -> list[np.ndarray]:
        encodings = self._hf.encode_batch([_as_str(t) for t in texts], add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int32) for e in encodings]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._hf.decode(self._text_ids(ids).tolist(), skip_special_tokens=True)

    def _definition(self) -> bytes:
        return self._hf.to_str().encode("utf-8")


# Tokenizer files shipped in the package, by the name data.tokenizer takes (how each was made: mdm/data/bpe.py).
BUILTIN = {"stdlib-bpe": pathlib.Path(__file__).parent / "assets" / "stdlib_bpe_2048.json"}


def make_tokenizer(data_cfg: Any) -> Tokenizer:
    """The tokenizer a data config asks for (`source`, `tokenizer`, `synthetic_vocab`), its
    special ids checked (`check_special_ids`)."""
    if data_cfg.source == "synthetic":
        tok: Tokenizer = SymbolTokenizer(data_cfg.synthetic_vocab)
    elif data_cfg.tokenizer == "bytes":
        tok = ByteTokenizer()
    elif data_cfg.tokenizer in BUILTIN:
        tok = HFTokenizer(BUILTIN[data_cfg.tokenizer])
    else:
        tok = HFTokenizer(data_cfg.tokenizer)
    check_special_ids(tok)
    return tok


def check_special_ids(tok: Tokenizer) -> None:
    """A one-line ConfigError unless BOS, EOS and PAD are distinct ids below vocab_size (the mask
    id is vocab_size, so none of them can be it): a shared id would make PAD stop samples, or
    EOS vanish into padding."""
    specials = {"BOS": tok.bos_id, "EOS": tok.eos_id, "PAD": tok.pad_id}
    if len(set(specials.values())) < 3 or max(specials.values()) >= tok.vocab_size or min(specials.values()) < 0:
        named = ", ".join(f"{k}={v}" for k, v in specials.items())
        raise ConfigError(
            f"the tokenizer's special ids ({named}, mask={tok.vocab_size}) must be distinct and below the vocabulary "
            f"size {tok.vocab_size}; give BOS, EOS and PAD their own tokens in the tokenizer file"
        )
