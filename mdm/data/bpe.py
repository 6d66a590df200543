"""Train a byte-level BPE tokenizer (HuggingFace `tokenizers`) on a split's documents.

`python -m mdm.data.prepare tokenizer --source embedded --vocab_size 2048 --out tok.json` runs it
over any document source; the result is a tokenizer.json that `data.tokenizer` takes. Byte-level
means every text encodes (no unknown token) and each id stands for whole bytes, so bits/byte
stays exact for UTF-8 text (invalid bytes are read as U+FFFD, which counts 3 bytes). The file
holds <bos>, <eos> and <pad> as ids 0, 1 and 2.

The built-in `data.tokenizer=stdlib-bpe` (`mdm.data.tokenizers.BUILTIN`) is what this command
makes from CPython 3.11's embedded corpus (train split, val_percent 5) with --vocab_size 2048.
"""

from __future__ import annotations

from collections.abc import Iterable

import tokenizers as hf

from mdm.data.sources import Document
from mdm.errors import ConfigError

SPECIALS = ("<bos>", "<eos>", "<pad>")


def train_bpe(documents: Iterable[Document], vocab_size: int) -> hf.Tokenizer:
    """A byte-level BPE of `vocab_size` ids (the 3 specials and the 256 byte symbols included),
    merges learnt from `documents` (str or UTF-8 bytes; invalid bytes become U+FFFD)."""
    smallest = len(SPECIALS) + 256
    if vocab_size < smallest:
        raise ConfigError(f"--vocab_size={vocab_size} must be at least {smallest} (3 specials + 256 bytes)")
    tok = hf.Tokenizer(hf.models.BPE())
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = hf.decoders.ByteLevel()
    trainer = hf.trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIALS),
        initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = (d.decode("utf-8", "replace") if isinstance(d, bytes) else d for d in documents)
    tok.train_from_iterator(texts, trainer)
    return tok
