"""Diagnostic: can a mixer learn the Omniglot label lookup when the image features are given?

Embeds every Omniglot image of the ICL split once with the frozen image encoder of a trained in-context run
(``--encoder-run``, e.g. the attention run of RESULTS.md), then meta-trains a fresh :class:`innerloop.icl.ICLModel`
without an encoder on 5-way K-shot tasks drawn from those cached features (support tokens ``[feature, one-hot, 1]``,
features centred on the support mean, as in the end-to-end model). It separates "the memory cannot learn key ->
label lookup at this budget" from "the encoder and the memory cannot get off the chance loss together".

    PYTHONPATH=. python scripts/icl_feature_probe.py --encoder-run RUN_DIR --mixer gru --steps 300 --lr 1e-3

Prints the training loss every ``--log-every`` updates and the accuracy on 300 fixed held-out tasks (in, OOD).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from innerloop.data.fewshot.omniglot import OmniglotClasses
from innerloop.icl.model import ICLModel, ImageEncoder
from innerloop.icl.omniglot import TRAIN_ROTATIONS, alphabet_split, omniglot_images


def encoder_from_run(run: Path) -> ImageEncoder:
    """The trained encoder of an in-context Omniglot run folder, or a random one (seed 0) for ``run = "random"``."""
    from safetensors.torch import load_file

    if str(run) == "random":
        torch.manual_seed(0)
        return ImageEncoder(64, groups=8).eval()
    cfg = json.loads((run / "config.json").read_text())
    latest = (run / "checkpoints" / "latest").read_text().strip()
    state = load_file(str(run / "checkpoints" / latest / "model.safetensors"))
    enc = ImageEncoder(cfg["channels"], groups=8)
    prefix = "model.encoder."
    enc.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
    return enc.eval()


@torch.no_grad()
def embed_split(enc: ImageEncoder, root: str, split: str) -> torch.Tensor:
    """``[classes, 20, d]`` features of every image of the split (train: with its rotations)."""
    images, names = omniglot_images(root, 28)
    chars = alphabet_split(names)[split]
    rotations = TRAIN_ROTATIONS if split == "train" else (0,)
    ds = OmniglotClasses(images, chars, rotations)
    n = len(ds.labels)
    out = torch.cat([enc(ds.images(torch.arange(i, min(i + 2000, n)))) for i in range(0, n, 2000)])
    return out.view(-1, ds.drawers, out.shape[-1])


def sample(feats: torch.Tensor, n: int, ways: int, shots: int, queries: int, g: torch.Generator):
    """``sx [n, ways*shots, d], sy [n, ways*shots], qx [n, ways*queries, d], qy``; support in random order."""
    sx, sy, qx, qy = [], [], [], []
    for _ in range(n):
        cls = torch.randperm(feats.shape[0], generator=g)[:ways]
        s, q, ys, yq = [], [], [], []
        for label, c in enumerate(cls.tolist()):
            d = torch.randperm(feats.shape[1], generator=g)[: shots + queries]
            s.append(feats[c, d[:shots]])
            q.append(feats[c, d[shots:]])
            ys += [label] * shots
            yq += [label] * queries
        order = torch.randperm(ways * shots, generator=g)
        sx.append(torch.cat(s)[order])
        sy.append(torch.tensor(ys)[order])
        qx.append(torch.cat(q))
        qy.append(torch.tensor(yq))
    return torch.stack(sx), torch.stack(sy), torch.stack(qx), torch.stack(qy)


def query_first(model: ICLModel, sx, sy, qx):
    """Each query read BEFORE the support set: row ``(n, i)`` is ``[q_i, s_1 .. s_K]``, answered at the last token."""
    n, q = qx.shape[:2]
    center = model.support_center(sx)
    st = model.encode(sx, sy, center)  # [n, K, F]
    qt = model.encode(qx, None, center)  # [n, Q, F]
    seq = torch.cat([qt.reshape(n * q, 1, -1), st.repeat_interleave(q, 0)], 1)  # [n*Q, 1+K, F]
    h, _ = model.blocks(model.embed(seq))
    return model.head(model.norm(h[:, -1])).reshape(n, q, -1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder-run", required=True, help="a trained run folder, or random")
    p.add_argument("--data-root", default="/work/shared/data/omniglot")
    p.add_argument("--cache", default="", help="file for the cached features (default: none, recompute)")
    p.add_argument("--mixer", default="gru")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--meta-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--ttt-base-lr", type=float, default=None)
    p.add_argument("--mini-batch", type=int, default=None, help="TTT inner mini-batch (default: ICLModel's 4)")
    p.add_argument("--mixer-opt", nargs="*", default=[], help="extra mixer kwargs key=value (floats)")
    p.add_argument("--query-first", action="store_true", help="each query token before the support set")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every feature by this")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    enc = encoder_from_run(Path(a.encoder_run))
    if a.cache and Path(a.cache).exists():
        feats = torch.load(a.cache)
    else:
        feats = {s: embed_split(enc, a.data_root, s) for s in ("train", "test", "ood")}
        if a.cache:
            torch.save(feats, a.cache)
    torch.manual_seed(a.seed)
    opts = {} if a.ttt_base_lr is None else {"ttt_base_lr": a.ttt_base_lr}
    if a.mini_batch is not None:
        opts["mini_batch_size"] = a.mini_batch
    opts.update({kv.split("=")[0]: float(kv.split("=")[1]) for kv in a.mixer_opt})
    feats = {k: v * a.scale for k, v in feats.items()}
    c = feats["train"][:200].flatten(0, 1)
    print(f"feature norm {c.norm(dim=-1).mean():.3f}, centred per class-mean {(c - c.mean(0)).norm(dim=-1).mean():.3f}")
    model = ICLModel(a.mixer, a.hidden_size, a.num_layers, a.num_heads, x_dim=feats["train"].shape[-1],
                     y_dim=a.ways, mixer_options=opts, center_features=True)  # fmt: skip
    def predict(sx, sy, qx):
        return query_first(model, sx, sy, qx) if a.query_first else model(sx, sy, qx)

    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        sx, sy, qx, qy = sample(feats["train"], a.meta_batch, a.ways, a.shots, a.shots, g)
        logits = predict(sx, F.one_hot(sy, a.ways).float(), qx)
        loss = F.cross_entropy(logits.flatten(0, 1), qy.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % a.log_every == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    for split in ("test", "ood"):
        gt = torch.Generator().manual_seed(2000)
        sx, sy, qx, qy = sample(feats[split], 300, a.ways, a.shots, min(15, 20 - a.shots), gt)
        with torch.no_grad():
            acc = (predict(sx, F.one_hot(sy, a.ways).float(), qx).argmax(-1) == qy).float().mean(1)
        print(f"{split}: acc {100 * acc.mean():.1f}% +- {196 * acc.std() / len(acc) ** 0.5:.1f}", flush=True)


if __name__ == "__main__":
    main()
