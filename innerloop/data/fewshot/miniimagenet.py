"""mini-ImageNet from a user-provided copy in the standard layout (Ravi & Larochelle split CSVs + image folder).

Layout::

    root/train.csv  root/val.csv  root/test.csv     # header "filename,label"; label = WordNet id (e.g. n01532829)
    root/images/<filename>                           # JPEG/PNG images, any size (resized to image_size)

Images are resized with Lanczos, as the MAML data script does (cbfinn/maml ``data/miniImagenet/proc_images.py``).

The data set cannot be downloaded by innerloop (ImageNet terms): point ``root`` at your copy (``--data-root DIR``
on the command line; default there ``$INNERLOOP_DATA/miniimagenet``). Images are loaded lazily with
Pillow and kept in memory once read.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["MiniImageNet"]

SPLITS = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}


class MiniImageNet:
    """One split of mini-ImageNet as a labelled dataset; ``images(indices)`` -> ``float32 [n, 3, S, S]`` in [0, 1].

    Args:
        root (str | Path): folder with the split CSVs and ``images/``.
        split (str): train | validation | test.
        image_size (int): side length after resizing. Default: 84.

    Raises:
        FileNotFoundError: the CSV or the images folder is missing, or a listed image does not exist.
        ValueError: a CSV without the ``filename,label`` header, or one that lists an image twice.
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 84) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.root = Path(root)
        csv_path, self.image_dir = self.root / SPLITS[split], self.root / "images"
        if not csv_path.exists() or not self.image_dir.is_dir():
            raise FileNotFoundError(
                f"{self.root} is not a mini-ImageNet root: expected {SPLITS[split]} and images/ (split CSVs "
                "train.csv, val.csv, test.csv with a filename,label header, and images/<filename>); give your copy's "
                "folder as --data-root DIR on the command line, root= in Python, or $INNERLOOP_DATA/miniimagenet"
            )
        with csv_path.open() as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"filename", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{csv_path}: expected a 'filename,label' header, got {reader.fieldnames}")
            rows = [(r["filename"], r["label"]) for r in reader]
        seen: set[str] = set()
        if dupes := [fn for fn, _ in rows if fn in seen or seen.add(fn)]:
            raise ValueError(f"{csv_path} lists {len(dupes)} images more than once (e.g. {dupes[0]}): a task could "
                             f"then hold the same image in its support and its query set; list each image once")
        missing = [fn for fn, _ in rows if not (self.image_dir / fn).exists()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {csv_path} are missing, e.g. {missing[0]}")
        self.files = [fn for fn, _ in rows]
        self.class_names = sorted({lab for _, lab in rows})
        index = {c: i for i, c in enumerate(self.class_names)}
        self.labels = torch.tensor([index[lab] for _, lab in rows], dtype=torch.long)
        self.image_size = image_size
        self._cache: dict[int, Tensor] = {}

    def _load(self, i: int) -> Tensor:
        if i not in self._cache:
            from PIL import Image

            with Image.open(self.image_dir / self.files[i]) as im:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.LANCZOS)
                pix = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
            self._cache[i] = pix.view(self.image_size, self.image_size, 3).permute(2, 0, 1).contiguous()
        return self._cache[i]

    def images(self, indices: Tensor) -> Tensor:
        return torch.stack([self._load(int(i)) for i in indices]).float().div_(255)
