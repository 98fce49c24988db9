"""An in-context learner: any registered mixer reads a task's support set, then answers each query from it.

Encoding. Support pair ``(x_k, y_k)`` is the token ``[x_k, y_k, 1]``; a query is ``[x, 0, 0]`` (the last feature
says "this token carries a label"). For classification ``y_k`` is the one-hot label (``y_dim`` = ways) and the query's
label slot is all zeros; for images ``x_k`` is the embedding of the image by a small conv net
(:class:`ImageEncoder`, trained end to end with the mixer) that normalises each image on its own, so no image's
embedding depends on another's; the embeddings are then centred on the mean embedding of the task's support set
(``center_features``), a summary that depends on neither the order of the support set nor any query.

The support prefix ``[s_1 .. s_K]`` is run once, the per-layer mixer states after
it are copied once per query, and every query is fed as a one-token continuation of that state in its own batch row.
So the prediction for query ``i`` depends on the support set and query ``i`` only (exactly: no query sees another),
and a task costs ``K + Q`` token steps instead of ``K * Q``.

Order. The support prefix is read causally, so the model is *not* invariant to the order of the support set
(recurrent mixers read it in order; causal attention with RoPE sees positions). Training presents the support set in
a random order per task, which teaches approximate invariance; the tests check the exact properties (query
independence, labels of queries unused) and that the order does matter.
"""

from __future__ import annotations

from dataclasses import is_dataclass
from typing import Any

import torch
from torch import Tensor, nn

from innerloop.layers import MIXERS, KVCache, MixerStack, RMSNorm

__all__ = ["ICLModel", "ImageEncoder", "repeat_state"]


def _batch_dim(a: Tensor, b: Tensor) -> int | None:
    """The dim where two probes of batch sizes 1 and 2 differ (None: the tensor is shared across the batch)."""
    diff = [i for i, (p, q) in enumerate(zip(a.shape, b.shape)) if p != q]
    return diff[0] if diff else None


def repeat_state(state: Any, probe1: Any, probe2: Any, repeats: int) -> Any:
    """Repeat every batch row of a mixer state ``repeats`` times (row ``n`` becomes rows ``n*r .. n*r + r - 1``).

    Where the batch dim is comes from two probes, the mixer's ``init_state(1)`` and ``init_state(2)`` (an RNN state
    is ``[L, B, S]``, the others ``[B, ...]``), so any mixer honouring the registry contract works.

    Args:
        state: the state (tensors, ints, None, NamedTuples/tuples of them, or a :class:`KVCache`).
        probe1, probe2: the same structure at batch sizes 1 and 2.
        repeats (int): copies per row.
    """
    if state is None or isinstance(state, (int, float, bool)):
        return state
    if isinstance(state, Tensor):
        dim = _batch_dim(probe1, probe2)
        return state if dim is None else state.repeat_interleave(repeats, dim)
    if isinstance(state, KVCache):
        k = state.keys.repeat_interleave(repeats, 0)  # [B * r, H, length, D]
        v = state.values.repeat_interleave(repeats, 0)
        return KVCache(k, v, state.length, [state.length])
    if isinstance(state, tuple):
        parts = [repeat_state(s, a, b, repeats) for s, a, b in zip(state, probe1, probe2)]
        return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
    if isinstance(state, list):
        return [repeat_state(s, a, b, repeats) for s, a, b in zip(state, probe1, probe2)]
    kind = "dataclass" if is_dataclass(state) else type(state).__name__
    raise TypeError(f"repeat_state does not know how to copy a mixer state of type {type(state).__name__} ({kind}); "
                    "add a case for it in innerloop/icl/model.py")  # fmt: skip


class ImageEncoder(nn.Module):
    """Four blocks ``conv3x3 stride 2 -> GroupNorm -> ReLU``, then the mean over the remaining grid.

    The trunk of MAML's Omniglot CNN (:class:`innerloop.models.meta_nets.ConvNet4`: 64 filters, stride-2
    convolutions, spatial mean) with per-image group normalisation instead of batch statistics, so the embedding of an
    image depends on that image alone (a query never sees another query through the normaliser).

    Args:
        channels (int): filters per block and embedding size. Default: 64.
        in_channels (int): image channels. Default: 1.
        groups (int): GroupNorm groups. Default: 8.

    Shapes: ``x [B, in_channels, H, W] -> [B, channels]``.

    Examples:
        >>> ImageEncoder(16, groups=4)(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 16])
    """

    def __init__(self, channels: int = 64, in_channels: int = 1, groups: int = 8) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, stride=2, padding=1),
                       nn.GroupNorm(groups, channels), nn.ReLU()]  # fmt: skip
        self.features = nn.Sequential(*blocks)
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).mean((2, 3))


class ICLModel(MixerStack):
    """``tokens -> linear -> [x + mixer(norm x); x + mlp(norm x)] * num_layers -> norm -> linear -> y``.

    Args:
        mixer (str): a registered mixer (``innerloop.layers.MIXERS``: attention, ttt_linear, ttt_mlp, mamba, lstm,
            gru, rnn).
        hidden_size (int): width ``C``. Default: 64.
        num_layers (int): blocks. Default: 2.
        num_heads (int): heads of attention and TTT mixers. Default: 4.
        x_dim (int): input dimension ``d`` of the task. Default: 1.
        mlp_ratio (int): SwiGLU width ``mlp_ratio * C`` after each mixer; 0 = no MLP. Default: 2.
        mixer_options (dict, Optional): extra mixer kwargs (TTT defaults to ``mini_batch_size=4``).
        y_dim (int): label features per token (1 for regression, ``ways`` for one-hot classes). Default: 1.
        out_dim (int, Optional): outputs per query (``ways`` logits for classification). Default: ``y_dim``.
        encoder (nn.Module, Optional): maps each input ``[B, *x_shape]`` to ``[B, d]`` before tokenising (an
            :class:`ImageEncoder` for images); ``x_dim`` must then be its output size. Default: None (``x`` is the
            feature vector itself).
        center_features (bool): subtract the mean feature of the task's support set from every support and query
            feature (:meth:`support_center`). A random conv encoder maps all Omniglot images to nearly parallel
            vectors (cosine ~0.9), and without centring attention, TTT-Linear and GRU stayed at the chance loss
            ln 5 for 400 meta-updates (RESULTS.md); centred, they leave it. Default: False.

    Shapes: :meth:`forward` ``support_x [N, K, *x_shape], support_y [N, K, y_dim], query_x [N, Q, *x_shape] ->
    [N, Q, out_dim]`` (``x_shape`` is ``(d,)`` without an encoder).

    Examples:
        >>> m = ICLModel("gru", hidden_size=16, num_layers=1, num_heads=2)
        >>> m(torch.randn(3, 5, 1), torch.randn(3, 5, 1), torch.randn(3, 7, 1)).shape
        torch.Size([3, 7, 1])
    """

    def __init__(self, mixer: str, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, *, x_dim: int = 1,
                 mlp_ratio: int = 2, mixer_options: dict[str, Any] | None = None, y_dim: int = 1,
                 out_dim: int | None = None, encoder: nn.Module | None = None,
                 center_features: bool = False) -> None:  # fmt: skip
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}; known mixers: {', '.join(sorted(MIXERS))}")
        out_dim = y_dim if out_dim is None else out_dim
        if min(hidden_size, num_layers, num_heads, x_dim, y_dim, out_dim) < 1 or mlp_ratio < 0:
            raise ValueError(f"hidden_size, num_layers, num_heads, x_dim, y_dim, out_dim must be >= 1 and mlp_ratio "
                             f">= 0, got {hidden_size}, {num_layers}, {num_heads}, {x_dim}, {y_dim}, {out_dim}, "
                             f"{mlp_ratio}")  # fmt: skip
        opts = dict(mixer_options or {})
        if mixer.startswith("ttt"):
            opts.setdefault("mini_batch_size", 4)  # a few support points: update the inner model often
        self.mixer_name, self.x_dim, self.y_dim = mixer, x_dim, y_dim
        self.encoder, self.center_features = encoder, center_features
        self.embed = nn.Linear(x_dim + y_dim + 1, hidden_size)
        self.build_blocks(mixer, hidden_size, num_layers, num_heads, mlp_ratio, opts)
        self.norm = RMSNorm(hidden_size)
        self.head = nn.Linear(hidden_size, out_dim)

    def features(self, x: Tensor) -> Tensor:
        """``[N, T, d]``: ``x`` itself, or each input through the encoder (``[N, T, *x_shape] -> [N, T, d]``)."""
        if self.encoder is None:
            if x.dim() != 3 or x.shape[-1] != self.x_dim:
                raise ValueError(f"expected inputs [N, T, {self.x_dim}], got {tuple(x.shape)}")
            return x
        if x.dim() < 3:
            raise ValueError(f"expected inputs [N, T, *x_shape] for the encoder, got {tuple(x.shape)}")
        h = self.encoder(x.flatten(0, 1))  # [N * T, d]
        return h.reshape(*x.shape[:2], -1)

    def encode(self, x: Tensor, y: Tensor | None, center: Tensor | None = None) -> Tensor:
        """Tokens ``[N, T, d + y_dim + 1]``: ``[x, y, 1]`` for labelled points, ``[x, 0, 0]`` when ``y`` is None;
        ``x`` here is :meth:`features` minus ``center [N, 1, d]`` when given (see :meth:`support_center`)."""
        x = self.features(x)
        if center is not None:
            x = x - center
        if y is None:
            return torch.cat([x, x.new_zeros(*x.shape[:2], self.y_dim + 1)], -1)
        if y.shape != (*x.shape[:2], self.y_dim):
            raise ValueError(f"expected labels [N, T, {self.y_dim}] = {(*x.shape[:2], self.y_dim)}, got "
                             f"{tuple(y.shape)}")  # fmt: skip
        return torch.cat([x, y, torch.ones_like(y[..., :1])], -1)

    def support_center(self, support_x: Tensor) -> Tensor | None:
        """``[N, 1, d]``: the mean feature of each task's support set when ``center_features``, else None.

        Subtracted from every support and query feature before tokenising. A mean over the support set depends on
        neither its order nor any query, so the prediction for query ``i`` still depends on the support set and
        query ``i`` only; the support tokens are then read causally as before.
        """
        return self.features(support_x).mean(1, keepdim=True) if self.center_features else None

    def read_support(self, support_x: Tensor, support_y: Tensor, center: Tensor | None = None) -> list:
        """Run the support prefix once; the per-layer states after it (batch ``N``)."""
        _, states = self.blocks(self.embed(self.encode(support_x, support_y, center)))
        return states

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        """Predictions ``[N, Q, out_dim]`` for ``query_x [N, Q, *x_shape]`` given the support set
        ``[N, K, *x_shape], [N, K, y_dim]``."""
        n, q = query_x.shape[:2]
        if support_x.shape[0] != n:
            raise ValueError(f"support has {support_x.shape[0]} tasks but the queries {n}")
        center = self.support_center(support_x)
        states = self.read_support(support_x, support_y, center)
        dev, dt = query_x.device, query_x.dtype
        states = [repeat_state(s, m.init_state(1, dev, dt), m.init_state(2, dev, dt), q)
                  for s, m in zip(states, self.mixers)]  # fmt: skip
        tokens = self.embed(self.encode(query_x, None, center)).reshape(n * q, 1, -1)  # query (n, i) -> row n*q+i
        h, _ = self.blocks(tokens, states)
        return self.head(self.norm(h)).reshape(n, q, -1)
