"""Omniglot (a tiny generated copy in the original layout, zips and folders; the real data only for its layout) and
mini-ImageNet (a tiny generated split-CSV + image-folder copy)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

PIL = pytest.importorskip("PIL", reason="Pillow is needed for the image data sets (pip install innerloop[vision])")
from PIL import Image  # noqa: E402

from innerloop.data.fewshot.benchmarks import get_tasksets  # noqa: E402
from innerloop.data.fewshot.miniimagenet import MiniImageNet  # noqa: E402
from innerloop.data.fewshot.omniglot import OmniglotClasses, load_omniglot, omniglot_split  # noqa: E402

REAL = Path("/work/shared/data/omniglot")


def _png(path_or_none, value: int, size=(105, 105)):
    im = Image.new("1", size, 1)
    im.paste(0, (10 * value % 80, 10, 10 * value % 80 + 20, 60))  # a black stroke whose position encodes value
    return im


def make_omniglot(root: Path, as_zip: bool, chars=(3, 2), drawers=4) -> Path:
    for split, n_alpha in zip(("images_background", "images_evaluation"), chars):
        files = {}
        cid = 0
        for a in range(n_alpha):
            for c in range(2):
                cid += 1
                for d in range(drawers):
                    files[f"{split}/Alpha{a}/character{c + 1:02d}/{cid:04d}_{d + 1:02d}.png"] = _png(None, cid + d)
        if as_zip:
            with zipfile.ZipFile(root / f"{split}.zip", "w") as z:
                for name, im in files.items():
                    p = root / "tmp.png"
                    im.save(p)
                    z.write(p, name)
                    p.unlink()
        else:
            for name, im in files.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                im.save(root / name)
    return root


def test_omniglot_zip_and_folder_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "z").mkdir()
    (tmp_path / "f").mkdir()
    iz, nz = load_omniglot(make_omniglot(tmp_path / "z", True))
    i_f, nf = load_omniglot(make_omniglot(tmp_path / "f", False))
    assert iz.shape == (10, 4, 28, 28) and iz.dtype == torch.uint8
    assert nz == nf and torch.equal(iz, i_f)
    assert iz.float().mean() < 128  # strokes bright on a dark background
    cached, _ = load_omniglot(tmp_path / "z")  # second load from the cache
    assert torch.equal(cached, iz)


def test_omniglot_classes_and_rotations(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "z").mkdir()
    images, names = load_omniglot(make_omniglot(tmp_path / "z", True))
    ds = OmniglotClasses(images, torch.tensor([0, 3]), rotations=(0, 90, 180, 270))
    assert len(torch.unique(ds.labels)) == 8
    x = ds.images(torch.tensor([0, 4, 8]))  # char 0 drawer 0 at 0, 90, 180 degrees
    assert x.shape == (3, 1, 28, 28)
    assert torch.equal(x[1, 0], torch.rot90(x[0, 0], 1)) and torch.equal(x[2, 0], torch.rot90(x[0, 0], 2))
    split = omniglot_split(names, train=5, val=2)
    assert sorted(torch.cat(list(split.values())).tolist()) == list(range(10))


def test_omniglot_bad_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an Omniglot root"):
        load_omniglot(tmp_path)
    (tmp_path / "images_background").mkdir()
    (tmp_path / "images_evaluation").mkdir()
    with pytest.raises(FileNotFoundError, match="no Omniglot PNGs"):
        load_omniglot(tmp_path, cache=False)


@pytest.mark.skipif(not REAL.exists(), reason="shared Omniglot copy not present")
def test_real_omniglot_layout():
    """The shared zips hold 964 + 659 characters x 20 drawers in the original layout (names only, fast)."""
    import re

    chars = set()
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(REAL / f"{name}.zip") as z:
            chars |= {m[1] for n in z.namelist() if (m := re.search(r"^(.*/character\d+)/[^/]+\.png$", n))}
    assert len(chars) == 1623


@pytest.mark.slow
def test_real_omniglot_tasks():
    train, _, test = get_tasksets("omniglot", ways=5, shots=1, root=REAL, eval_tasks=600)
    assert len(train.classes) == 4400 and len(test.classes) == 423 and len(test) == 600
    b = test.eval_batch(0, 2)
    assert b.support_x.shape == (2, 5, 1, 28, 28)


def make_miniimagenet(root: Path, classes=4, per_class=3) -> Path:
    (root / "images").mkdir(parents=True)
    for split, offset in (("train", 0), ("val", 10), ("test", 20)):
        rows = ["filename,label"]
        for c in range(classes):
            for i in range(per_class):
                fn = f"n{offset + c:08d}{i:04d}.jpg"
                Image.new("RGB", (30 + i, 20), (40 * c, 10 * i, 200)).save(root / "images" / fn)
                rows.append(f"{fn},n{offset + c:08d}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def test_miniimagenet_folder(tmp_path):
    root = make_miniimagenet(tmp_path / "mini")
    ds = MiniImageNet(root, "validation", image_size=12)
    assert len(ds.class_names) == 4 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    x = ds.images(torch.tensor([0, 4]))
    assert x.shape == (2, 3, 12, 12) and x.min() >= 0 and x.max() <= 1
    train, val, test = get_tasksets("miniimagenet", ways=3, shots=1, query_shots=2, root=root, eval_tasks=5)
    b = test.eval_batch(0, 5)
    assert b.support_x.shape == (5, 3, 3, 84, 84) and b.query_y.shape == (5, 6)
    with pytest.raises(ValueError, match="ways=5 is more than the 4 classes"):
        get_tasksets("miniimagenet", ways=5, shots=1, root=root)
    with pytest.raises(ValueError, match="exceeds the 3 examples"):
        get_tasksets("miniimagenet", ways=2, shots=2, query_shots=2, root=root)
    with pytest.raises(FileNotFoundError, match="not a mini-ImageNet root"):
        MiniImageNet(tmp_path, "train")


def test_damaged_omniglot_zip_is_a_clear_error(tmp_path, monkeypatch):
    """A truncated zip (an interrupted download) or a damaged member names the zip and how to get a fresh one."""
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    root = make_omniglot(tmp_path, True)
    zip_path = root / "images_background.zip"
    data = zip_path.read_bytes()
    zip_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"images_background.zip is damaged or incomplete .*brendenlake/omniglot"):
        load_omniglot(root, cache=False)
    zip_path.write_bytes(data)
    with zipfile.ZipFile(zip_path) as z:
        info = z.infolist()[3]
    at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 5  # inside the member's data
    damaged = bytearray(data)
    damaged[at] ^= 0xFF
    zip_path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"images_background.zip is damaged or incomplete \((BadZipFile|error)"):
        load_omniglot(root, cache=False)


def test_a_file_that_is_not_a_png_is_named(tmp_path):
    root = make_omniglot(tmp_path, False)
    bad = sorted((root / "images_evaluation").rglob("*.png"))[1]
    bad.write_bytes(b"<html>404</html>")
    with pytest.raises(ValueError, match=r"images_evaluation/Alpha0/character01/0001_02.png is not a readable PNG"):
        load_omniglot(root, cache=False)


def test_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "z").mkdir()
    root = make_omniglot(tmp_path / "z", True)
    images, _ = load_omniglot(root)
    cache = next((tmp_path / "cache").glob("omniglot28_*.pt"))
    cache.write_bytes(cache.read_bytes()[:100])
    again, _ = load_omniglot(root)
    assert torch.equal(again, images)


def _full_names(background: int = 964, evaluation: int = 659) -> list[str]:
    return sorted([f"images_background/A/character{i:04d}" for i in range(background)]
                  + [f"images_evaluation/B/character{i:04d}" for i in range(evaluation)])  # fmt: skip


def test_a_partial_omniglot_is_refused_by_the_benchmark(tmp_path, monkeypatch):
    """The MAML split permutes all 1,623 characters: a copy missing some would silently give other classes."""
    from innerloop.data.fewshot import omniglot

    def fake_load(names):
        return lambda root: (torch.zeros(len(names), 20, 2, 2, dtype=torch.uint8), names)

    monkeypatch.setattr(omniglot, "load_omniglot", fake_load(_full_names()))
    train, val, test = get_tasksets("omniglot", root=tmp_path)
    assert (len(train.classes), len(val.classes), len(test.classes)) == (4400, 100, 423)
    monkeypatch.setattr(omniglot, "load_omniglot", fake_load(_full_names(background=914)))
    with pytest.raises(ValueError, match=r"not the whole of Omniglot: found 914 \+ 659 characters .* expected 964"):
        get_tasksets("omniglot", root=tmp_path)


def test_download_keeps_only_verified_zips(tmp_path, monkeypatch):
    """A download goes to .part and is kept only when its checksum matches; a zip already there is verified."""
    import hashlib
    import urllib.request

    from innerloop.data.fewshot.omniglot import download_omniglot

    served = {"images_background": b"background bytes", "images_evaluation": b"evaluation bytes"}
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, dest: Path(dest).write_bytes(
        served[url.rsplit("/", 1)[1].removesuffix(".zip")]))  # fmt: skip
    good = {k: hashlib.md5(v).hexdigest() for k, v in served.items()}
    with pytest.raises(ValueError, match="is damaged or changed upstream: its md5 is .* nothing was written"):
        download_omniglot(tmp_path / "a")  # the upstream md5s: these bytes do not match
    assert list((tmp_path / "a").iterdir()) == []
    assert download_omniglot(tmp_path / "b", md5=good) == tmp_path / "b"
    assert (tmp_path / "b" / "images_evaluation.zip").read_bytes() == b"evaluation bytes"
    with pytest.raises(ValueError, match=r"is not the upstream images_background.zip: .* Delete it"):
        download_omniglot(tmp_path / "b")  # already there, other checksums (as a rebuilt copy): not re-downloaded


def test_miniimagenet_splits_must_not_share_classes(tmp_path):
    root = make_miniimagenet(tmp_path / "mini")
    (root / "test.csv").write_text((root / "train.csv").read_text())  # a wrong CSV: the training classes again
    with pytest.raises(ValueError, match="4 classes .* are in both the train and the test split"):
        get_tasksets("miniimagenet", ways=2, shots=1, root=root)


def test_data_root_that_is_a_file(tmp_path):
    (tmp_path / "omniglot.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="omniglot.zip is a file, not a folder: give --data-root DIR"):
        get_tasksets("omniglot", root=tmp_path / "omniglot.zip")


def test_an_edited_omniglot_folder_is_decoded_again(tmp_path, monkeypatch):
    """The cache was keyed by the top folders' size and mtime, which an edit inside an alphabet does not change: a
    replaced image or a character added by finishing an extraction came back from the stale cache."""
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "f").mkdir()
    root = make_omniglot(tmp_path / "f", False)
    before, names = load_omniglot(root)
    png = sorted((root / "images_background").rglob("*.png"))[0]
    _png(None, 7).save(png)
    changed, _ = load_omniglot(root)
    assert torch.equal(changed, load_omniglot(root, cache=False)[0]) and not torch.equal(changed, before)
    new = root / "images_background" / "Alpha0" / "character03"
    new.mkdir()
    for d in range(4):
        _png(None, 30 + d).save(new / f"0099_{d + 1:02d}.png")
    assert len(load_omniglot(root)[1]) == len(names) + 1


def test_miniimagenet_images_listed_twice_are_refused(tmp_path):
    """An image listed twice in a split could be in a task's support and query sets at once (46 of 50 tasks here
    before the fix); one listed in two splits is a leak between them."""
    root = make_miniimagenet(tmp_path / "mini")
    lines = (root / "train.csv").read_text().splitlines()
    (root / "train.csv").write_text("\n".join(lines + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"train.csv lists 12 images more than once \(e.g. n000000000000.jpg\)"):
        MiniImageNet(root, "train")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    test = (root / "test.csv").read_text().splitlines()
    test[1] = lines[1].split(",")[0] + "," + test[1].split(",")[1]  # a training image under a test class
    (root / "test.csv").write_text("\n".join(test) + "\n")
    with pytest.raises(ValueError, match="1 images .* are listed in both the train and the test split"):
        get_tasksets("miniimagenet", ways=2, shots=1, root=root)
