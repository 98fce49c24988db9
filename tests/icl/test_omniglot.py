"""Omniglot in the ICL harness: the alphabet split, the task sampler on a tiny copy of the real data (a few
characters, 14x14), and the comparison end to end. Skips cleanly without Pillow or the shared data."""

from __future__ import annotations

import csv
import re
import zipfile
from pathlib import Path

import pytest
import torch

from innerloop.cli.main import main
from innerloop.icl.omniglot import alphabet_split
from innerloop.icl.trainer import ICLConfig

REAL = Path("/work/shared/data/omniglot")
# (zip, alphabet, characters) of the tiny copy: two background alphabets, one evaluation alphabet
TINY_CHARS = (("images_background", "Arcadian", 3), ("images_background", "Greek", 3),
              ("images_evaluation", "Angelic", 3))  # fmt: skip


def _names(spec: dict[str, dict[str, int]]) -> list[str]:
    return [f"{split}/{a}/character{c + 1:02d}" for split, alphas in spec.items() for a, n in alphas.items()
            for c in range(n)]  # fmt: skip


def test_alphabet_split_holds_out_characters_of_training_alphabets_and_whole_evaluation_alphabets():
    names = _names({"images_background": {"A": 10, "B": 5, "C": 2}, "images_evaluation": {"X": 4, "Y": 3}})
    split = alphabet_split(names)
    train, test, ood = (set(split[k].tolist()) for k in ("train", "test", "ood"))
    assert not train & test and not (train | test) & ood
    assert len(train | test | ood) == len(names)
    alpha = lambda ids: {names[i].split("/")[1] for i in ids}  # noqa: E731
    assert alpha(test) == alpha(train) == {"A", "B", "C"}  # in distribution: unseen characters of seen alphabets
    assert alpha(ood) == {"X", "Y"}  # out of distribution: unseen alphabets
    assert [sum(names[i].split("/")[1] == a for i in test) for a in "ABC"] == [2, 1, 1]  # a fifth, at least one
    assert all(torch.equal(split[k], alphabet_split(names)[k]) for k in split)  # fixed seed
    with pytest.raises(ValueError, match="needs both images_background and images_evaluation"):
        alphabet_split(_names({"images_background": {"A": 3}}))
    with pytest.raises(ValueError, match="alphabet A has 1 character"):
        alphabet_split(_names({"images_background": {"A": 1}, "images_evaluation": {"X": 2}}))


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"shots \+ eval_points = 5 \+ 16 > 20; lower --eval-points"):
        ICLConfig(task="omniglot", shots=5, eval_points=16)
    with pytest.raises(ValueError, match="omniglot tasks are noiseless"):
        ICLConfig(task="omniglot", noise=0.1)
    assert ICLConfig(task="omniglot", shots=1).test_points == 15
    assert ICLConfig(task="omniglot", shots=10).test_points == 10
    assert ICLConfig(task="sinusoid").test_points == 100 and ICLConfig(task="omniglot").classes == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ICLConfig(task="omniglot", data_root=str(tmp_path / "nowhere")).tasks("train")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A copy of a few real characters (all 20 drawers) in the original zip layout."""
    pytest.importorskip("PIL", reason="Pillow is needed to decode Omniglot (pip install innerloop[vision])")
    if not all((REAL / f"{z}.zip").is_file() for z in ("images_background", "images_evaluation")):
        pytest.skip(f"the shared Omniglot zips are not in {REAL}")
    root = tmp_path_factory.mktemp("omniglot")
    for zname in ("images_background", "images_evaluation"):
        keep = {(a, f"character{c + 1:02d}") for z, a, n in TINY_CHARS if z == zname for c in range(n)}
        with zipfile.ZipFile(REAL / f"{zname}.zip") as src, zipfile.ZipFile(root / f"{zname}.zip", "w") as dst:
            for name in src.namelist():
                m = re.search(r"/([^/]+)/(character\d+)/[^/]+\.png$", name)
                if m and (m[1], m[2]) in keep:
                    dst.writestr(name, src.read(name))
    return root


@pytest.fixture
def tiny_cfg(tiny_root, tmp_path, monkeypatch):
    monkeypatch.setenv("INNERLOOP_CACHE", str(tmp_path / "cache"))

    def make(**kw) -> ICLConfig:
        base = dict(task="omniglot", ways=2, shots=1, image_size=14, data_root=str(tiny_root), meta_batch=2, steps=2,
                    hidden_size=8, num_layers=1, num_heads=2, channels=8, eval_tasks=3, eval_batch=2, eval_points=2,
                    log_every=1, inner_lr=0.4, out=str(tmp_path / "run"))  # fmt: skip
        return ICLConfig(**{**base, **kw})

    return make


def test_tasks_are_seeded_and_the_splits_disjoint(tiny_cfg):
    cfg = tiny_cfg(shots=2)
    train, test, ood = cfg.tasks("train"), cfg.tasks("test"), cfg.tasks("test", ood=True)
    b = train.batch(1, 3)
    assert tuple(b.support_x.shape) == (3, 4, 1, 14, 14) and tuple(b.query_x.shape) == (3, 4, 1, 14, 14)
    assert b.support_y.dtype == torch.int64 and sorted(b.support_y[0].tolist()) == [0, 0, 1, 1]
    assert float(b.support_x.min()) >= 0 and float(b.support_x.max()) <= 1
    again = cfg.tasks("train").batch(1, 3)
    assert all(torch.equal(x, y) for x, y in zip(b.tensors(), again.tensors()))
    assert train.classes == 4 * 4 and test.classes == 2 and ood.classes == 3  # rotations only in training
    chars = [set(t.sampler.dataset.characters.tolist()) for t in (train, test, ood)]
    assert not chars[0] & chars[1] and not (chars[0] | chars[1]) & chars[2]
    assert tuple(test.eval_batch(0, 3).query_x.shape) == (3, 4, 1, 14, 14)  # eval_points=2 per class
    with pytest.raises(IndexError):
        test.eval_batch(2, 2)  # a fixed set of eval_tasks=3


def test_compare_cli_on_omniglot_writes_accuracy_table_and_plots(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg()
    out = tmp_path / "cmp"
    argv = ["icl", "compare", "--task", "omniglot", "--data-root", cfg.data_root, "--ways", "2", "--shots", "1", "2",
            "--learners", "gru", "fomaml", "--steps", "2", "--meta-batch", "2", "--image-size", "14", "--channels",
            "8", "--hidden-size", "8", "--num-layers", "1", "--num-heads", "2", "--eval-tasks", "3", "--eval-batch",
            "2", "--eval-points", "2", "--inner-lr", "0.4", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "2 classes x (K support + K query images)" in text and "accuracy in" in text
    with open(out / "compare.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["shots"], r["learner"]) for r in rows] == [(k, n) for k in "12" for n in ("gru", "fomaml",
                                                                                     "nearest_pixel")]
    assert all(0 <= float(r["acc_in"]) <= 1 and 0 <= float(r["acc_ood"]) <= 1 for r in rows)
    assert {r["kind"] for r in rows} == {"in-context", "gradient", "baseline"}
    assert "| K | learner | kind | params | train s | accuracy % (in) |" in (out / "compare.md").read_text()
    assert (out / "runs" / "omniglot-2way2shot-fomaml" / "metrics.json").is_file()
    pytest.importorskip("matplotlib")
    assert (out / "error_vs_shots.png").stat().st_size > 0 and (out / "cost.png").stat().st_size > 0


def test_train_cli_prints_accuracy(tiny_cfg, capsys):
    cfg = tiny_cfg()
    assert main(["icl", "train", "--task", "omniglot", "--learner", "attention", "--data-root", cfg.data_root,
                 "--ways", "2", "--shots", "1", "--steps", "1", "--meta-batch", "2", "--image-size", "14",
                 "--channels", "8", "--hidden-size", "8", "--num-layers", "1", "--num-heads", "2", "--eval-tasks",
                 "2", "--eval-points", "2", "--out", cfg.out]) == 0  # fmt: skip
    assert re.search(r"test accuracy \(ood\): \d+\.\d% \+- ", capsys.readouterr().out)


def _encoder_and_rest(cfg: ICLConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    from innerloop.icl import build_learner
    from innerloop.runs import load_latest_weights

    learner = build_learner(cfg.learner, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                            num_heads=cfg.num_heads, classes=cfg.ways, channels=cfg.channels)  # fmt: skip
    if Path(cfg.out, "checkpoints").is_dir():
        load_latest_weights(Path(cfg.out) / "checkpoints", learner)
    else:  # the initialisation: build() seeds torch with cfg.seed first
        from innerloop.icl.trainer import build

        learner = build(cfg)[0]
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    enc = {k: v for k, v in state.items() if k.startswith("model.encoder.")}
    return enc, {k: v for k, v in state.items() if not k.startswith("model.encoder.")}


@pytest.mark.parametrize("freeze, encoder_moves", [(2, False), (1, True), (0, True)])
def test_freeze_encoder_steps_keeps_the_image_encoder_at_its_init(tiny_cfg, tmp_path, freeze, encoder_moves):
    from innerloop.icl import train

    cfg = tiny_cfg(learner="gru", freeze_encoder_steps=freeze, out=str(tmp_path / f"freeze{freeze}"))
    enc0, rest0 = _encoder_and_rest(cfg)
    train(cfg, evaluate_after=False)
    enc1, rest1 = _encoder_and_rest(cfg)
    assert any(not torch.equal(rest0[k], rest1[k]) for k in rest0)  # the memory and head train throughout
    moved = any(not torch.equal(enc0[k], enc1[k]) for k in enc0)
    assert moved == encoder_moves


def test_freeze_encoder_steps_needs_an_in_context_image_learner():
    with pytest.raises(ValueError, match="freeze-encoder-steps applies to the image encoder"):
        ICLConfig(task="sinusoid", learner="gru", freeze_encoder_steps=5)
    with pytest.raises(ValueError, match="freeze-encoder-steps applies to the image encoder"):
        ICLConfig(task="omniglot", learner="maml", freeze_encoder_steps=5)
    with pytest.raises(ValueError, match="freeze_encoder_steps must be >= 0"):
        ICLConfig(task="omniglot", learner="gru", freeze_encoder_steps=-1)


def test_a_partial_copy_is_warned_about(tiny_root):
    from innerloop.icl.omniglot import omniglot_images

    omniglot_images.cache_clear()
    with pytest.warns(UserWarning, match=r"is not the whole of Omniglot: found 6 \+ 3 characters.*not comparable"):
        omniglot_images(str(tiny_root), 14)
