"""Data: tokenizers, document sources, the synthetic Markov language, grain pipelines."""

from mdm.data.pipeline import corpus_statistics, make_iterator
from mdm.data.sources import SyntheticSequences, documents, synthetic_sequences
from mdm.data.synthetic import MarkovLanguage
from mdm.data.tokenizers import (
    ByteTokenizer,
    HFTokenizer,
    SymbolTokenizer,
    Tokenizer,
    make_tokenizer,
)

__all__ = [
    "ByteTokenizer",
    "HFTokenizer",
    "MarkovLanguage",
    "SymbolTokenizer",
    "SyntheticSequences",
    "Tokenizer",
    "corpus_statistics",
    "documents",
    "make_iterator",
    "make_tokenizer",
    "synthetic_sequences",
]
