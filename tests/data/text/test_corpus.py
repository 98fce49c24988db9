"""Byte corpora: bundled tiny-shakespeare, folders of documents, document-aware splits, Gutenberg stripping."""

from __future__ import annotations

import pytest
import torch

from innerloop.data.text.corpus import load_bytes, load_documents, split, split_corpus, strip_gutenberg
from innerloop.data.text.windows import random_windows


def test_bundled_tiny_shakespeare():
    (doc,) = load_documents(None)
    assert doc.dtype == torch.uint8 and len(doc) == 1_115_394
    assert bytes(doc[:9].tolist()) == b"First Cit"
    train, val, val_docs = split_corpus([doc], 0.1)
    assert len(train) + len(val) == len(doc) and torch.equal(val_docs[0], val)


def test_folder_of_documents_split_by_document(tmp_path):
    for i in range(5):
        (tmp_path / f"{i}.txt").write_bytes(bytes([65 + i]) * (100 + i))
    (tmp_path / "skip.md").write_text("not a txt")
    docs = load_documents(tmp_path)
    assert [len(d) for d in docs] == [100, 101, 102, 103, 104]
    train, val, val_docs = split_corpus(docs, 0.2)
    assert len(val_docs) == 1 and set(val.tolist()) == {69} and 69 not in set(train.tolist())
    _, _, two = split_corpus(docs, 0.4)
    assert len(two) == 2


def test_strip_gutenberg():
    raw = b"header\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\nbody line\n*** END OF THE PROJECT\nlicence"
    assert strip_gutenberg(raw) == b"body line\n"
    assert strip_gutenberg(b"plain") == b"plain"


def test_strip_gutenberg_older_markers_and_closing_line():
    """Many PG files (6 of the 36 shared books: Jane Eyre, Gulliver's Travels, ...) write the markers without the
    space, ``***START OF ...***``; most end the body with an "End of the Project Gutenberg EBook of ..." line."""
    raw = (b"The Project Gutenberg EBook of X\r\nlicence header\r\n***START OF THE PROJECT GUTENBERG EBOOK X***\r\n"
           b"Chapter 1\r\nbody\r\n\r\nEnd of the Project Gutenberg EBook of X, by Y\r\n\r\n"
           b"***END OF THE PROJECT GUTENBERG EBOOK X***\r\n*** START: FULL LICENSE ***\r\nTHE FULL LICENSE")
    assert strip_gutenberg(raw) == b"Chapter 1\r\nbody\r\n\r\n"
    # the closing line may run over two lines; only a line that starts with it, near the end, is cut
    raw = b"*** START OF THE PROJECT GUTENBERG EBOOK W ***\nthe End of Project Gutenberg days\nlast\n\nEnd of The " \
          b"Project Gutenberg Etext of Walden, and On The Duty Of Civil\nDisobedience, by Thoreau\n\n\n*** END OF THE"
    assert strip_gutenberg(raw) == b"the End of Project Gutenberg days\nlast\n\n"


def test_non_utf8_and_errors(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00abc")
    assert load_documents(tmp_path / "bin.txt")[0].tolist() == [255, 254, 0, 97, 98, 99]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        load_documents(tmp_path / "e")
    with pytest.raises(ValueError, match="val_fraction"):
        split(torch.zeros(10, dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="smaller than one context window"):
        random_windows(torch.zeros(10, dtype=torch.uint8), 2, 10, torch.Generator())
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_bytes(tmp_path / "bin.txt", sha256="0" * 64)
