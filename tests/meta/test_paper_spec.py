"""Guard tests: the MAML-family experiments compute what the papers (and the reference code, cbfinn/maml) specify.

Each test quotes the spec it pins. Paper = Finn et al. 2017 (arXiv 1703.03400), Sec. 5.1 / 5.2 and Appendix A.1;
reference code = cbfinn/maml @ a7f45f1 (docs: shared/docs/meta.md, "cbfinn/maml").
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from innerloop.data.fewshot.benchmarks import SINUSOID_EVAL_POINTS, get_tasksets
from innerloop.data.fewshot.sinusoid import AMPLITUDE, INPUT_RANGE, PHASE
from innerloop.data.fewshot.tasks import mean_ci95
from innerloop.meta.trainer import MetaConfig
from innerloop.models.meta_nets import BatchNorm2d, SinusoidMLP, miniimagenet_cnn, omniglot_cnn


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_sinusoid_mlp_is_the_papers():
    """Paper 5.1: "a neural network model with 2 hidden layers of size 40 with ReLU nonlinearities"."""
    m = SinusoidMLP()
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(1, 40), (40, 40), (40, 1)]
    assert sum(isinstance(mod, nn.ReLU) for mod in m.modules()) == 2
    assert _count(m) == 1761  # the "params" column of RESULTS.md's sinusoid tables


def test_sinusoid_task_distribution_is_the_papers():
    """Paper 5.1: "the amplitude varies within [0.1, 5.0] and the phase varies within [0, pi] ... datapoints x are
    sampled uniformly from [-5.0, 5.0]. The loss is the mean-squared error"; Meta-SGD's table: 100 test points."""
    ours = {"amplitude": AMPLITUDE, "phase": PHASE, "x": INPUT_RANGE}
    assert ours == {"amplitude": (0.1, 5.0), "phase": (0.0, math.pi), "x": (-5.0, 5.0)}
    train, _, test = get_tasksets("sinusoid", shots=10)
    assert train.shots == train.query_shots == 10  # K support + K query (cbfinn: update_batch_size * 2 points)
    assert test.shots == 10 and test.query_shots == SINUSOID_EVAL_POINTS == 100


def test_omniglot_cnn_is_the_papers():
    """Paper 5.2: "4 modules with a 3 x 3 convolutions and 64 filters, followed by batch normalization, a ReLU
    nonlinearity ... The Omniglot images are downsampled to 28 x 28, so the dimensionality of the last hidden layer is
    64 ... For Omniglot, we used strided convolutions instead of max-pooling." (cbfinn: stride 2, 'SAME' padding,
    then the mean over the remaining grid)."""
    m = omniglot_cnn(5)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert all(c.stride == (2, 2) and c.padding == (1, 1) for c in convs)
    assert not any(isinstance(mod, nn.MaxPool2d) for mod in m.modules())
    assert sum(isinstance(mod, BatchNorm2d) for mod in m.modules()) == 4
    assert m.features(torch.zeros(2, 1, 28, 28)).shape == (2, 64, 2, 2)  # 28 -> 14 -> 7 -> 4 -> 2, then mean -> 64
    assert m.head.in_features == 64 and m.head.out_features == 5
    assert _count(m) == 112261  # the "params" column of RESULTS.md's Omniglot table


def test_miniimagenet_cnn_is_the_papers():
    """Paper 5.2: "For MiniImagenet, we used 32 filters per layer"; cbfinn: --max_pool=True, stride-1 convolutions,
    2x2 'VALID' max-pool, last hidden layer flattened (84 -> 42 -> 21 -> 10 -> 5: 5 * 5 * 32 = 800)."""
    m = miniimagenet_cnn(5)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 4 and all(c.out_channels == 32 and c.stride == (1, 1) for c in convs)
    assert convs[0].in_channels == 3
    assert sum(isinstance(mod, nn.MaxPool2d) for mod in m.modules()) == 4
    assert m.features(torch.zeros(2, 3, 84, 84)).shape == (2, 32, 5, 5) and m.head.in_features == 800


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm_uses_the_batch_statistics_always(mode):
    """cbfinn/maml#37 (docs/meta.md): "batch statistics always from the current batch, same at meta-test". No running
    statistics exist, so train() and eval() agree and a prediction depends on the rest of its batch (transductive)."""
    torch.manual_seed(0)
    m = omniglot_cnn(5)
    assert not list(m.buffers())
    getattr(m, mode)()
    x = torch.rand(10, 1, 28, 28)
    full = m(x)
    torch.testing.assert_close(full, m.train()(x))
    assert not torch.allclose(m(x[:5]), full[:5], atol=1e-4)  # the same 5 images in another batch: other logits


def test_evaluation_protocol_defaults():
    """cbfinn main.py: NUM_TEST_POINTS = 600, ci95 = 1.96 * stds / sqrt(NUM_TEST_POINTS); Adam, meta_lr 0.001."""
    cfg = MetaConfig()
    assert cfg.eval_tasks == 600 and cfg.meta_lr == 1e-3 and cfg.meta_optimizer == "adam"
    v = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert mean_ci95(v)[1] == pytest.approx(1.96 * v.std().item() / 2)


def _one_bit_png(size: int = 105) -> bytes:
    from PIL import Image

    im = Image.new("1", (size, size), 1)
    im.paste(0, (20, 15, 33, 90))  # a black vertical stroke, 13 px wide
    im.paste(0, (20, 50, 80, 61))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def test_omniglot_resize_is_lanczos_on_grey_not_the_reference_scripts_binary_nearest():
    """Pins what the Omniglot loader does and how it differs from cbfinn's resize_images.py.

    The Omniglot PNGs are 1-bit (PIL mode "1"). cbfinn's script calls ``im.resize((28, 28), resample=LANCZOS)`` on the
    1-bit image, which Pillow performs as NEAREST (Image.resize: mode "1"/"P" -> NEAREST): binary 28x28 images. The
    loader converts to "L" first, so its Lanczos resize gives anti-aliased grey levels (FINDINGS: a data difference
    from the reference code; the RESULTS Omniglot numbers were made with the grey images)."""
    pytest.importorskip("PIL")
    from PIL import Image

    from innerloop.data.fewshot.omniglot import _decode

    data = _one_bit_png()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1"
        ref = torch.tensor(list(im.resize((28, 28), resample=Image.LANCZOS).convert("L").tobytes()))
        nearest = torch.tensor(list(im.resize((28, 28), resample=Image.NEAREST).convert("L").tobytes()))
    assert set(ref.unique().tolist()) <= {0, 255} and torch.equal(ref, nearest)  # the reference: binary, nearest
    ours = _decode(data, 28, "test")
    assert len(ours.unique()) > 2  # ours: grey levels


def test_miniimagenet_resize_is_lanczos_as_the_reference_script(tmp_path):
    """cbfinn data/miniImagenet/proc_images.py: ``im.resize((84, 84), resample=Image.LANCZOS)``."""
    pytest.importorskip("PIL")
    from PIL import Image

    from innerloop.data.fewshot.miniimagenet import MiniImageNet

    (tmp_path / "images").mkdir()
    g = torch.Generator().manual_seed(0)
    pix = (torch.rand(100, 120, 3, generator=g) * 255).to(torch.uint8)
    src = Image.frombytes("RGB", (120, 100), bytes(pix.flatten().tolist()))
    src.save(tmp_path / "images" / "a.png")
    (tmp_path / "train.csv").write_text("filename,label\na.png,n0\n")
    got = MiniImageNet(tmp_path, "train", image_size=84).images(torch.tensor([0]))[0]
    want = src.resize((84, 84), resample=Image.LANCZOS)
    want = torch.tensor(list(want.tobytes()), dtype=torch.uint8).view(84, 84, 3).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(got, want)
