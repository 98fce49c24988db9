"""Text data for language models: tokenizers, corpora, token caches on disk, window sampling, and a run's LM data.

- :mod:`.corpus`: documents as bytes (bundled tiny-shakespeare, one file, a folder of ``.txt``), document-aware splits;
- :mod:`.tokenizer`: bytes (vocab 256) and a locally trained byte-level BPE (``tokenizer.json``);
- :mod:`.cache`: a corpus encoded once into a memory-mapped ``.bin`` + JSON index, shared by runs
  (:func:`default_cache_dir`);
- :mod:`.windows`: ``[B, T]`` input / next-token target windows from a tensor or a memmap;
- :mod:`.lm`: :func:`load_data` / :func:`run_tokenizer`: the tokens and tokenizer of an LM run (used by the trainer
  and by ``innerloop lm eval``).

Only the BPE tokenizer needs an extra package (``tokenizers``, the ``bpe`` extra), imported when first used.
"""

from .cache import TokenCache, default_cache_dir, open_cache, split_cache
from .corpus import (
    TINY_SHAKESPEARE,
    corpus_files,
    load_bytes,
    load_documents,
    num_val_docs,
    read_document,
    split,
    split_corpus,
    strip_gutenberg,
    training_text,
)
from .lm import LMData, cache_dir_of, load_data, run_tokenizer, token_bytes_of
from .tokenizer import BPETokenizer, ByteTokenizer, Tokenizer, load_tokenizer, make_tokenizer, train_bpe
from .windows import gather_windows, random_windows, step_windows

__all__ = [
    "TINY_SHAKESPEARE", "BPETokenizer", "ByteTokenizer", "LMData", "TokenCache", "Tokenizer", "cache_dir_of",
    "corpus_files", "default_cache_dir", "gather_windows", "load_bytes", "load_data", "load_documents",
    "load_tokenizer", "make_tokenizer", "num_val_docs", "open_cache", "random_windows", "read_document",
    "run_tokenizer", "split", "split_cache", "split_corpus", "step_windows", "strip_gutenberg", "token_bytes_of",
    "train_bpe", "training_text",
]  # fmt: skip
