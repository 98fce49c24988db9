"""Omniglot (Lake et al. 2015) for N-way K-shot tasks, 28x28, with the MAML split.

Reads the two original zips (``images_background.zip``, ``images_evaluation.zip``) or their extracted folders
(``images_background/<Alphabet>/characterNN/*.png``, also under ``omniglot-py/``). Every image is converted to
greyscale, resized to 28x28 with Lanczos and inverted so strokes are 1. This is not what the MAML data script gives:
cbfinn/maml's ``resize_images.py`` asks for Lanczos on the 1-bit PNGs (PIL mode "1"), which Pillow resizes with
NEAREST, so its 28x28 images are binary; ours have grey levels at the stroke edges. The decoded array (1623 x 20 x
28 x 28 uint8, 25 MB) is cached under ``$INNERLOOP_CACHE`` (default ``~/.cache/innerloop``), keyed by the zips'
paths, sizes and mtimes (for extracted folders: every PNG's), so a changed copy is decoded again.

``get_tasksets("omniglot")`` and ``innerloop meta train --task omniglot`` read the data from
``$INNERLOOP_DATA/omniglot`` unless given a folder (``root=`` in Python, ``--data-root DIR`` on the command line).
Get the two zips from https://github.com/brendenlake/omniglot (folder ``python/``) or with :func:`download_omniglot`.

MAML split: the 1,623 characters (both zips) are shuffled with a fixed seed; the first 1,200 are for meta-training
(1,100 train + 100 validation, as in cbfinn/maml) and the remaining 423 for meta-test. The sizes are MAML's, the
characters are not: the shuffle is torch's (seed 1), not that code's Python ``random.shuffle``, and it is not the
Vinyals et al. split. Training classes are augmented with rotations by 90, 180 and 270 degrees as new classes (4,400
classes); validation and test classes are not rotated. (cbfinn/maml rotates differently: each class of every task,
training and test alike, gets a random multiple of 90 degrees.) :func:`check_complete` refuses a partial copy.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import urllib.request
import zipfile
import zlib
from pathlib import Path

import torch
from torch import Tensor

from innerloop.data._io import user_cache_dir

__all__ = ["OmniglotClasses", "check_complete", "download_omniglot", "load_omniglot", "omniglot_split", "SPLIT_SEED"]

ZIPS = ("images_background", "images_evaluation")
REPO = "https://github.com/brendenlake/omniglot"
URL = REPO + "/raw/master/python/{}.zip"
# md5 of the upstream zips (the only published checksums); a local rebuild may differ (see data README).
UPSTREAM_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
SPLIT_SEED = 1
FULL_COUNTS = {"images_background": 964, "images_evaluation": 659}  # characters per zip; 20 drawers each
DRAWERS = 20
_DAMAGED = (f"get a fresh copy of images_background.zip / images_evaluation.zip from {REPO} (folder python/), or "
            f"with download_omniglot(DIR), which checks their md5")  # fmt: skip
_PNG = re.compile(r"(?:^|/)(images_background|images_evaluation)/([^/]+)/(character\d+)/([^/]+\.png)$")


def _sources(root: Path) -> list[tuple[str, Path]]:
    """``[(split_name, path to zip or folder)]`` found under ``root``; raises if ``root`` is not Omniglot."""
    found = []
    for name in ZIPS:
        for cand in (
            root / name,
            root / "omniglot-py" / name,
            root / f"{name}.zip",
            root / "omniglot-py" / f"{name}.zip",
        ):
            if cand.exists():
                found.append((name, cand))
                break
    if len(found) != 2:
        raise FileNotFoundError(
            f"{root} is not an Omniglot root: expected images_background and images_evaluation (the zips or their "
            f"extracted folders <split>/<Alphabet>/characterNN/*.png, optionally under omniglot-py/); found "
            f"{[str(p) for _, p in found] or 'neither'}. Get the two zips from {REPO} (folder python/) or with "
            f"download_omniglot(DIR), and give DIR as --data-root DIR (root= in Python) or $INNERLOOP_DATA/omniglot"
        )
    return found


def _decode(data: bytes, size: int, where: str) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("L").resize((size, size), Image.LANCZOS)
            pix = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # PIL raises SyntaxError for a broken PNG chunk
        raise ValueError(f"{where} is not a readable PNG ({type(e).__name__}): {_DAMAGED}") from None
    return 255 - pix  # strokes (black in the PNG) become bright


def _read_zip(src: Path, chars: dict[str, list[tuple[str, bytes]]]) -> None:
    try:
        with zipfile.ZipFile(src) as z:
            for n in z.namelist():
                m = _PNG.search(n)
                if m:
                    chars.setdefault(f"{m[1]}/{m[2]}/{m[3]}", []).append((m[4], z.read(n)))
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a truncated download, a damaged member
        raise ValueError(f"{src} is damaged or incomplete ({type(e).__name__}: {e}): {_DAMAGED}") from None


def _read_all(root: Path, size: int) -> tuple[Tensor, list[str]]:
    chars: dict[str, list[tuple[str, bytes]]] = {}
    where: dict[str, Path] = {}  # character -> the zip or folder it came from (for errors)
    for _, src in _sources(root):
        if src.suffix == ".zip":
            _read_zip(src, chars)
        else:
            for path in sorted(src.rglob("*.png")):
                m = _PNG.search(path.as_posix())
                if m:
                    chars.setdefault(f"{m[1]}/{m[2]}/{m[3]}", []).append((m[4], path.read_bytes()))
        where.update({n: src for n in chars if n not in where})
    if not chars:
        raise FileNotFoundError(f"{root} holds no Omniglot PNGs (<split>/<Alphabet>/characterNN/*.png)")
    names = sorted(chars)
    counts = {len(chars[n]) for n in names}
    if len(counts) != 1:
        raise ValueError(f"Omniglot characters must all have the same number of drawers, found {sorted(counts)}")
    images = torch.stack([torch.stack([_decode(d, size, f"{where[n]}: {n}/{f}") for f, d in sorted(chars[n])])
                          for n in names])  # fmt: skip
    return images, names  # [C, drawers, size, size] uint8


def load_omniglot(root: str | Path, size: int = 28, cache: bool = True) -> tuple[Tensor, list[str]]:
    """All characters as ``uint8 [C, drawers, size, size]`` (strokes bright) and their ``split/Alphabet/characterNN``.

    Raises:
        FileNotFoundError: ``root`` does not hold the two Omniglot zips/folders or has no PNGs in that layout.
    """
    root = Path(root)
    srcs = _sources(root)
    key = hashlib.sha1(repr([(str(p.resolve()), p.stat().st_size, p.stat().st_mtime) for _, p in srcs]).encode())
    for _, p in srcs:  # a folder's own size and mtime miss edits inside its alphabets: key on every PNG too
        if p.is_dir():
            key.update(repr([(f.relative_to(p).as_posix(), f.stat().st_size, f.stat().st_mtime_ns)
                             for f in sorted(p.rglob("*.png"))]).encode())  # fmt: skip
    cache_dir = user_cache_dir()
    cache_file = cache_dir / f"omniglot{size}_{key.hexdigest()[:12]}.pt"
    if cache and cache_file.exists():
        try:
            blob = torch.load(cache_file, weights_only=False)
            return blob["images"], blob["names"]
        except Exception:  # noqa: BLE001 - an unreadable cache (any error torch.load gives) is rebuilt
            pass
    images, names = _read_all(root, size)
    if cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"images": images, "names": names}, tmp)
        os.replace(tmp, cache_file)
    return images, names


def check_complete(images: Tensor, names: list[str], root: str | Path) -> None:
    """Raise unless ``images``/``names`` (from :func:`load_omniglot`) are all of Omniglot: 964 + 659 characters x 20.

    The MAML split is a permutation of all 1,623 characters, so a partial copy (an interrupted extraction, the
    ``_small`` zips) would silently give other training and test classes.

    Raises:
        ValueError: a count differs; the message gives the counts found and expected.
    """
    found = {split: sum(n.startswith(split + "/") for n in names) for split in FULL_COUNTS}
    if found != FULL_COUNTS or images.shape[1] != DRAWERS:
        raise ValueError(
            f"{root} is not the whole of Omniglot: found {found['images_background']} + "
            f"{found['images_evaluation']} characters (background + evaluation) x {images.shape[1]} drawers, expected "
            f"{' + '.join(map(str, FULL_COUNTS.values()))} x {DRAWERS}, which the 1,100/100/423 split needs; {_DAMAGED}"
        )


def omniglot_split(names: list[str], seed: int = SPLIT_SEED, train: int = 1100, val: int = 100) -> dict[str, Tensor]:
    """Character indices of the MAML split: shuffled with ``seed``; ``train`` + ``val`` first, the rest is test."""
    if train + val >= len(names):
        raise ValueError(f"split {train}+{val} leaves no test characters out of {len(names)}")
    perm = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed))
    return {"train": perm[:train], "validation": perm[train : train + val], "test": perm[train + val :]}


class OmniglotClasses:
    """A labelled dataset over some Omniglot characters, optionally with rotated copies as extra classes.

    Args:
        images (Tensor): ``uint8 [C, drawers, H, W]`` from :func:`load_omniglot`.
        characters (Tensor): indices into ``images`` to use.
        rotations (tuple[int, ...]): multiples of 90 degrees; each rotation of each character is its own class.
            Default: (0,).

    ``images(indices)`` returns ``float32 [n, 1, H, W]`` in [0, 1].
    """

    def __init__(self, images: Tensor, characters: Tensor, rotations: tuple[int, ...] = (0,)) -> None:
        self.data = images
        self.characters = torch.as_tensor(characters, dtype=torch.long)
        self.rotations = tuple(rotations)
        drawers = images.shape[1]
        n_classes = len(self.characters) * len(self.rotations)
        self.labels = torch.arange(n_classes).repeat_interleave(drawers)
        self.drawers = drawers

    def images(self, indices: Tensor) -> Tensor:
        cls, drawer = indices // self.drawers, indices % self.drawers
        char = self.characters[cls // len(self.rotations)]
        rot = cls % len(self.rotations)
        x = self.data[char, drawer].float().div_(255)  # [n, H, W]
        out = torch.empty_like(x)
        for r_i, r in enumerate(self.rotations):
            m = rot == r_i
            if m.any():
                out[m] = torch.rot90(x[m], r // 90, dims=(1, 2))
        return out.unsqueeze(1)


def _checksum_error(path: Path, name: str, md5: dict[str, str], sha256: dict[str, str]) -> str | None:
    """What is wrong with ``path``'s checksums (``None``: they match or none is expected)."""
    data = path.read_bytes()
    for algo, expected in (("md5", md5.get(name)), ("sha256", sha256.get(name))):
        if expected and (got := hashlib.new(algo, data).hexdigest()) != expected:
            return f"its {algo} is {got}, expected {expected}"
    return None


def download_omniglot(
    root: str | Path, md5: dict[str, str] | None = None, sha256: dict[str, str] | None = None
) -> Path:
    """Download the two zips from the official repository into ``root`` and verify their checksums.

    A zip already in ``root`` is verified, not downloaded again. A download goes to ``<name>.part`` and becomes
    ``<name>.zip`` only once its checksums match, so a damaged download is never used. The upstream md5s are checked
    by default (the only ones published); pass ``sha256={name: hex}`` to pin sha256 as well, and ``md5={}`` to
    verify a copy rebuilt from the pixels (e.g. the shared data folder, whose README gives its sha256). Never called
    by tests.

    Raises:
        ValueError: a zip in ``root`` or a download whose checksum differs (the message says what to do).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    md5 = UPSTREAM_MD5 if md5 is None else md5
    for name in ZIPS:
        dest = root / f"{name}.zip"
        if dest.exists():
            if problem := _checksum_error(dest, name, md5, sha256 or {}):
                raise ValueError(f"{dest} is not the upstream {name}.zip: {problem}. Delete it and call "
                                 f"download_omniglot again; for a copy rebuilt from the pixels (data README), pass "
                                 f"md5={{}} and its sha256=")  # fmt: skip
            continue
        tmp = dest.with_suffix(".part")
        try:
            urllib.request.urlretrieve(URL.format(name), tmp)
            if problem := _checksum_error(tmp, name, md5, sha256 or {}):
                raise ValueError(f"the download of {URL.format(name)} is damaged or changed upstream: {problem}; "
                                 f"nothing was written to {dest}. Try again, or get the zip by hand")  # fmt: skip
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return root
