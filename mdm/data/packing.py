"""Turning tokenized documents into fixed-length records.

pack: documents become `[BOS] doc [EOS]`, are concatenated and cut into
non-overlapping windows of `seq_len` (no padding; a document may span windows;
the tail shorter than a window is dropped).
pad: each `[BOS] doc [EOS]` is truncated to `seq_len` and right-padded with PAD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np


def with_specials(tokens: np.ndarray, bos_id: int, eos_id: int) -> np.ndarray:
    """int32 [n] -> int32 [n + 2]: `[BOS] tokens [EOS]`."""
    out = np.empty(len(tokens) + 2, dtype=np.int32)
    out[0], out[1:-1], out[-1] = bos_id, tokens, eos_id
    return out


def concatenate_documents(docs: Sequence[np.ndarray], bos_id: int, eos_id: int) -> np.ndarray:
    """The token stream `[BOS] d_0 [EOS] [BOS] d_1 [EOS] ...` as int32 [sum(len(d) + 2)]."""
    if len(docs) == 0:
        return np.empty(0, dtype=np.int32)
    lengths = np.array([len(d) + 2 for d in docs], dtype=np.int64)
    stream = np.empty(int(lengths.sum()), dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    stream[starts] = bos_id
    stream[starts + lengths - 1] = eos_id
    for start, doc in zip(starts.tolist(), docs):
        stream[start + 1 : start + 1 + len(doc)] = doc
    return stream


def pad_document(tokens: np.ndarray, seq_len: int, bos_id: int, eos_id: int, pad_id: int) -> np.ndarray:
    """int32 [seq_len]: `[BOS] tokens [EOS]` truncated to seq_len, then PAD."""
    return pad_record(with_specials(tokens, bos_id, eos_id), seq_len, pad_id)


def pad_record(document: np.ndarray, seq_len: int, pad_id: int) -> np.ndarray:
    """int32 [seq_len]: a document that already has its BOS/EOS, truncated to seq_len, then PAD."""
    record = np.asarray(document[:seq_len], np.int32)
    return np.pad(record, (0, seq_len - len(record)), constant_values=pad_id)


class Windows(Sequence):
    """Window i of a token stream: `stream[i * seq_len : (i + 1) * seq_len]`, int32 [seq_len]."""

    def __init__(self, stream: np.ndarray, seq_len: int) -> None:
        self.stream = stream
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.stream) // self.seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.stream[index * self.seq_len : (index + 1) * self.seq_len]


class PackIterDataset(grain.IterDataset):
    """Streams parent token documents (already with BOS/EOS) as seq_len windows.

    The state is (parent state before the current document, offset into it), so
    restoring re-reads one document at most. The last partial window is dropped.
    """

    def __init__(self, parent: grain.IterDataset, seq_len: int) -> None:
        super().__init__(parent)
        self._seq_len = seq_len

    def __iter__(self) -> grain.DatasetIterator:
        return _PackIterator(self._parent.__iter__(), self._seq_len)


class _PackIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, seq_len: int) -> None:
        super().__init__(parent)
        self._seq_len = seq_len
        self._doc_state = parent.get_state()
        self._doc = np.empty(0, dtype=np.int32)
        self._offset = 0

    def __next__(self) -> np.ndarray:
        pieces, need = [], self._seq_len
        while need:
            if self._offset == len(self._doc):
                self._doc_state = self._parent.get_state()
                self._doc = next(self._parent)
                self._offset = 0
            piece = self._doc[self._offset : self._offset + need]
            pieces.append(piece)
            self._offset += len(piece)
            need -= len(piece)
        return np.concatenate(pieces)

    def get_state(self) -> dict[str, Any]:
        return {"parent": self._doc_state, "offset": self._offset}

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self._doc_state = state["parent"]
        self._doc = next(self._parent) if state["offset"] else np.empty(0, dtype=np.int32)
        self._offset = state["offset"]
