"""Optimizee problems for learned optimizers: a small task API, three problems, and batching over many instances.

A *problem* is a distribution over optimisation tasks. One draw is an *instance* (a dict of tensors holding
everything that defines it: a quadratic's matrix and target, a classifier's minibatch indices, a regression task's
data); the optimizee's parameters are a separate dict, initialised per instance. An optimiser (learned or not) sees
only the loss and its gradient. Batches of ``N`` independent instances are stacked along a new leading dimension,
so one update-rule call updates all of them (a coordinatewise rule cannot tell the difference), and the per-instance
losses come from ``torch.func.vmap`` over :meth:`Problem.loss` where the problem allows it, a Python loop otherwise.

Examples:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> instances, params = sample_instances(Quadratic(), 4, g)
    >>> instances["W"].shape, params["theta"].shape, batch_loss(Quadratic(), instances, params, step=0).shape
    (torch.Size([4, 10, 10]), torch.Size([4, 10]), torch.Size([4]))
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Instance = dict[str, Tensor]
Params = dict[str, Tensor]

__all__ = ["ConvClassifier", "Instance", "MLPClassifier", "ModuleProblem", "Problem", "Quadratic", "batch_loss",
           "digits", "sample_instances"]  # fmt: skip


@runtime_checkable
class Problem(Protocol):
    """What an optimizee problem provides. Any object with these members is a problem.

    Attributes:
        vectorize (bool): :meth:`loss` can run under ``torch.func.vmap`` over instances (no data-dependent Python
            control flow, no ``.item()``, no in-place updates of captured tensors). False: a Python loop is used.

    Methods:
        sample(generator) -> instance: one independent task, a ``dict[str, Tensor]`` (every tensor is stacked over
            the instances of a batch, so all draws must have the same shapes).
        init_params(instance, generator) -> params: the optimizee's starting parameters, ``dict[str, Tensor]``.
        loss(instance, params, step) -> Tensor: the scalar loss of one instance at optimizee step ``step`` (0, 1,
            ...). A deterministic problem ignores ``step``; a stochastic one picks its minibatch from the instance by
            ``step``, so the loss at a step is the same however often it is evaluated (the gradient at ``theta_t`` and
            the meta-loss term ``f(theta_t)`` use the same minibatch) and an episode is a pure function of its instance.
    """

    vectorize: bool

    def sample(self, generator: torch.Generator) -> Instance: ...

    def init_params(self, instance: Instance, generator: torch.Generator) -> Params: ...

    def loss(self, instance: Instance, params: Params, step: int) -> Tensor: ...


class Quadratic:
    """``f(theta) = ||W theta - y||^2``, ``W ~ U[0, 1)^{dim x dim}``, ``y ~ U[0, 1)^dim``, ``theta_0 ~ N(0, std^2)``.

    The quadratic of the released code of Andrychowicz et al. (2016) (``problems.quadratic``: 10 dimensions, uniform
    ``W`` and ``y``, normal start with standard deviation 0.01; the paper's text says Gaussian ``W`` and ``y``). One
    difference, on purpose: the released code minimises the *mean* over its 128 problems, so each problem's gradient
    is scaled by 1/128; here every instance gets the gradient of its own loss, whatever the batch size.

    Args:
        dim (int, Optional): the dimension of ``theta``. Default: 10.
        std (float, Optional): standard deviation of ``theta_0``. Default: 0.01.
        dtype (torch.dtype, Optional): Default: float32.

    Instances: ``W [dim, dim]``, ``y [dim]``; parameters: ``theta [dim]``.
    """

    vectorize = True

    def __init__(self, dim: int = 10, std: float = 0.01, dtype: torch.dtype = torch.float32) -> None:
        if dim < 1 or not std >= 0:
            raise ValueError(f"quadratic: dim must be >= 1 and std >= 0, got dim={dim}, std={std}")
        self.dim, self.std, self.dtype = dim, std, dtype

    def sample(self, generator: torch.Generator) -> Instance:
        W = torch.rand(self.dim, self.dim, generator=generator, dtype=self.dtype)
        y = torch.rand(self.dim, generator=generator, dtype=self.dtype)
        return {"W": W, "y": y}

    def init_params(self, instance: Instance, generator: torch.Generator) -> Params:
        return {"theta": self.std * torch.randn(self.dim, generator=generator, dtype=self.dtype)}

    def loss(self, instance: Instance, params: Params, step: int) -> Tensor:
        r = instance["W"] @ params["theta"] - instance["y"]  # [dim]
        return (r * r).sum()

    def __repr__(self) -> str:
        return f"Quadratic(dim={self.dim}, std={self.std})"


class MLPClassifier:
    """An MLP classifier (one sigmoid hidden layer by default) trained by minibatches of a fixed image data set.

    The paper's MNIST optimizee (20 sigmoid hidden units, softmax cross-entropy, minibatch 128, weights and biases
    ``~ N(0, 0.01^2)``) on any flat image tensor; ``hidden``, ``layers`` and ``activation`` give the paper's
    generalisation optimizees (40 units, 2 hidden layers, ReLU). An instance is the sequence of minibatch indices it
    will see (drawn uniformly with replacement, as the released code does): ``batches [horizon, batch_size]``; step
    ``t`` uses row ``t % horizon``.

    Args:
        images (Tensor): ``[n, d]`` inputs (flattened, scaled to about [0, 1]).
        labels (Tensor): ``[n]`` int64 class labels ``0 .. classes-1``.
        hidden (int, Optional): hidden units. Default: 20.
        batch_size (int, Optional): examples per optimizee step. Default: 128.
        horizon (int, Optional): distinct minibatches per instance (use the number of optimizee steps + 1).
            Default: 101.
        activation (str, Optional): ``"sigmoid"`` or ``"relu"`` (the paper's failure case). Default: ``"sigmoid"``.
        init_std (float, Optional): standard deviation of the initial weights and biases. Default: 0.01.
        layers (int, Optional): hidden layers, each of ``hidden`` units. Default: 1.

    Parameters: ``w1 [d, hidden]``, ``b1 [hidden]``, ..., ``w{L} [hidden, hidden]``, ``b{L} [hidden]``, then the
    output layer ``w{L+1} [hidden, classes]``, ``b{L+1} [classes]`` (one hidden layer: ``w1, b1, w2, b2``).
    """

    vectorize = True

    def __init__(self, images: Tensor, labels: Tensor, hidden: int = 20, batch_size: int = 128, horizon: int = 101,
                 activation: str = "sigmoid", init_std: float = 0.01, layers: int = 1) -> None:  # fmt: skip
        if images.dim() != 2 or labels.shape != images.shape[:1]:
            raise ValueError(f"mlp classifier: images must be [n, d] and labels [n], got {tuple(images.shape)} and "
                             f"{tuple(labels.shape)}; flatten the images first")  # fmt: skip
        if activation not in ("sigmoid", "relu"):
            raise ValueError(f"mlp classifier: unknown activation {activation!r}; choose from relu, sigmoid")
        if min(hidden, batch_size, horizon, layers) < 1:
            raise ValueError(f"mlp classifier: hidden, batch_size, horizon and layers must be >= 1, got {hidden}, "
                             f"{batch_size}, {horizon}, {layers}")  # fmt: skip
        self.images, self.labels = images.float(), labels.long()
        self.classes = int(self.labels.max()) + 1
        self.hidden, self.batch_size, self.horizon = hidden, batch_size, horizon
        self.activation, self.init_std, self.layers = activation, init_std, layers

    def to(self, device: torch.device | str) -> MLPClassifier:
        """Move the data set to ``device`` (instances and parameters are moved by the caller)."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def sample(self, generator: torch.Generator) -> Instance:
        n = self.images.shape[0]
        return {"batches": torch.randint(n, (self.horizon, self.batch_size), generator=generator)}

    def init_params(self, instance: Instance, generator: torch.Generator) -> Params:
        widths = [self.images.shape[1]] + [self.hidden] * self.layers + [self.classes]
        shapes = {}
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            shapes[f"w{i}"], shapes[f"b{i}"] = (a, b), (b,)
        return {k: self.init_std * torch.randn(s, generator=generator) for k, s in shapes.items()}

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """``[b, classes]`` logits of inputs ``x [b, d]``."""
        z = x
        for i in range(1, self.layers + 1):
            z = z @ params[f"w{i}"] + params[f"b{i}"]
            z = torch.sigmoid(z) if self.activation == "sigmoid" else torch.relu(z)
        out = self.layers + 1
        return z @ params[f"w{out}"] + params[f"b{out}"]

    def loss(self, instance: Instance, params: Params, step: int) -> Tensor:
        idx = instance["batches"][step % self.horizon]  # [batch_size]
        x, y = self.images[idx], self.labels[idx]
        return F.cross_entropy(self.logits(params, x), y)

    def __repr__(self) -> str:
        return (f"MLPClassifier(n={self.images.shape[0]}, d={self.images.shape[1]}, hidden={self.hidden}, "
                f"layers={self.layers}, classes={self.classes}, batch_size={self.batch_size}, "
                f"{self.activation})")  # fmt: skip


class ConvClassifier:
    """A small conv net classifier trained by minibatches of a fixed image data set: the paper's CIFAR-10 optimizee.

    The released code's ``cifar`` net, scaled to small images: convolutions of ``channels`` (3x3, padding 1), each
    followed by batch normalisation (statistics of the minibatch, learnable scale and shift), ReLU and 2x2 max
    pooling (while the image is at least 2x2); then fully connected ReLU layers of ``fc`` units and a linear
    ``classes``-way output, softmax cross-entropy. Weights ``~ N(0, 1/fan_in)``, biases and shifts 0, scales 1. An
    instance is the sequence of its minibatch indices, as for :class:`MLPClassifier`.

    Args:
        images (Tensor): ``[n, c, h, w]`` or ``[n, h, w]`` images scaled to about [0, 1].
        labels (Tensor): ``[n]`` int64 class labels ``0 .. classes-1``.
        channels (Sequence[int], Optional): channels of each conv layer. Default: (16, 16, 16).
        fc (Sequence[int], Optional): units of each hidden fully connected layer. Default: (32,).
        batch_size (int, Optional): examples per optimizee step. Default: 128.
        horizon (int, Optional): distinct minibatches per instance. Default: 101.

    Parameters: ``conv{i}.w [c_out, c_in, 3, 3]``, ``conv{i}.b``, ``bn{i}.scale``, ``bn{i}.shift [c_out]``;
    ``fc{j}.w [d_in, d_out]``, ``fc{j}.b [d_out]`` (the last one is the output layer).

    Examples:
        >>> import torch
        >>> problem = ConvClassifier(torch.rand(30, 8, 8), torch.arange(30) % 3, batch_size=4, horizon=2)
        >>> instances, params = sample_instances(problem, 2, torch.Generator().manual_seed(0))
        >>> params["conv1.w"].shape, batch_loss(problem, instances, params, step=0).shape
        (torch.Size([2, 16, 1, 3, 3]), torch.Size([2]))
    """

    vectorize = True

    def __init__(self, images: Tensor, labels: Tensor, channels: Sequence[int] = (16, 16, 16),
                 fc: Sequence[int] = (32,), batch_size: int = 128, horizon: int = 101) -> None:  # fmt: skip
        if images.dim() == 3:
            images = images.unsqueeze(1)
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            raise ValueError(f"conv classifier: images must be [n, c, h, w] or [n, h, w] and labels [n], got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")  # fmt: skip
        if not channels or min([*channels, *fc, batch_size, horizon]) < 1:
            raise ValueError(f"conv classifier: need at least one conv layer and sizes >= 1, got channels="
                             f"{list(channels)}, fc={list(fc)}, batch_size={batch_size}, "
                             f"horizon={horizon}")  # fmt: skip
        self.images, self.labels = images.float(), labels.long()
        self.classes = int(self.labels.max()) + 1
        self.channels, self.fc = [int(c) for c in channels], [int(u) for u in fc]
        self.batch_size, self.horizon = batch_size, horizon

    def to(self, device: torch.device | str) -> ConvClassifier:
        """Move the data set to ``device``."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self

    def sample(self, generator: torch.Generator) -> Instance:
        n = self.images.shape[0]
        return {"batches": torch.randint(n, (self.horizon, self.batch_size), generator=generator)}

    def _flat_features(self) -> int:
        h, w = self.images.shape[2:]
        for _ in self.channels:
            if min(h, w) >= 2:
                h, w = h // 2, w // 2
        return self.channels[-1] * h * w

    def init_params(self, instance: Instance, generator: torch.Generator) -> Params:
        params: Params = {}
        c_in = self.images.shape[1]
        for i, c in enumerate(self.channels, start=1):
            params[f"conv{i}.w"] = torch.randn(c, c_in, 3, 3, generator=generator) / math.sqrt(9 * c_in)
            params[f"conv{i}.b"] = torch.zeros(c)
            params[f"bn{i}.scale"], params[f"bn{i}.shift"] = torch.ones(c), torch.zeros(c)
            c_in = c
        widths = [self._flat_features(), *self.fc, self.classes]
        for j, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            params[f"fc{j}.w"] = torch.randn(a, b, generator=generator) / math.sqrt(a)
            params[f"fc{j}.b"] = torch.zeros(b)
        return params

    def logits(self, params: Params, x: Tensor) -> Tensor:
        """``[b, classes]`` logits of images ``x [b, c, h, w]``."""
        for i in range(1, len(self.channels) + 1):
            x = F.conv2d(x, params[f"conv{i}.w"], params[f"conv{i}.b"], padding=1)
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            var = x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
            x = (x - mean) * torch.rsqrt(var + 1e-5)
            x = x * params[f"bn{i}.scale"].view(1, -1, 1, 1) + params[f"bn{i}.shift"].view(1, -1, 1, 1)
            x = torch.relu(x)
            if min(x.shape[2:]) >= 2:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        last = len(self.fc) + 1
        for j in range(1, last + 1):
            x = x @ params[f"fc{j}.w"] + params[f"fc{j}.b"]
            if j < last:
                x = torch.relu(x)
        return x

    def loss(self, instance: Instance, params: Params, step: int) -> Tensor:
        idx = instance["batches"][step % self.horizon]  # [batch_size]
        return F.cross_entropy(self.logits(params, self.images[idx]), self.labels[idx])

    def __repr__(self) -> str:
        return (f"ConvClassifier(n={self.images.shape[0]}, image={tuple(self.images.shape[1:])}, "
                f"channels={self.channels}, fc={self.fc}, classes={self.classes}, "
                f"batch_size={self.batch_size})")  # fmt: skip


def digits(split: str = "train", test_fraction: float = 0.25) -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download) as ``(images [n, 64], labels [n])``.

    Pixels are scaled from 0..16 to [0, 1]. The split is fixed (a seeded permutation): ``"train"`` is the first
    ``1 - test_fraction`` of it, ``"test"`` the rest. MNIST itself cannot be downloaded here; these digits are the
    same kind of task at 8x8.

    Args:
        split (str, Optional): ``"train"`` or ``"test"``. Default: ``"train"``.
        test_fraction (float, Optional): Default: 0.25.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'innerloop[optim]'``).
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits: unknown split {split!r}; choose from test, train")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits problem needs scikit-learn (its 8x8 digits ship with it): "
                          "pip install 'innerloop[optim]'") from e  # fmt: skip
    data = load_digits()
    images = torch.as_tensor(data.data, dtype=torch.float32) / 16.0  # [1797, 64]
    labels = torch.as_tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    n_test = int(round(test_fraction * len(labels)))
    keep = order[n_test:] if split == "train" else order[:n_test]
    return images[keep], labels[keep]


class ModuleProblem:
    """Any ``nn.Module`` with a loss and a data sampler as an optimizee problem.

    Each instance draws its data with ``sampler(generator)`` (a dict of tensors, e.g. ``{"x": [n, d], "y": [n]}``)
    and starts from freshly initialised weights: a copy of ``module`` whose submodules' ``reset_parameters()`` run
    under a seed drawn from the generator. The loss is ``loss_fn(module(inputs), targets)`` with the weights given
    as the parameter dict (``torch.func.functional_call``).

    Args:
        module (nn.Module): the optimizee network (its buffers are used as they are). A parameter whose own
            module has no ``reset_parameters()`` (a bare ``nn.Parameter`` of a custom module) keeps its value in
            every instance: a warning names such parameters.
        loss_fn (Callable[[Tensor, Tensor], Tensor]): ``(outputs, targets) -> scalar``, e.g. ``F.mse_loss``.
        sampler (Callable[[torch.Generator], dict[str, Tensor]]): draws one instance's data.
        batch (Callable[[Instance, int], tuple[Tensor, Tensor]], Optional): ``(instance, step) -> (inputs,
            targets)``, the minibatch of step ``step``. Default: None (the whole ``instance["x"], instance["y"]``).
        vectorize (bool, Optional): the loss runs under ``vmap`` (false for modules with data-dependent control
            flow or batch norm in training mode). Default: True.

    Examples:
        >>> import torch
        >>> def sampler(g):
        ...     x = torch.randn(16, 3, generator=g)
        ...     return {"x": x, "y": x.sum(-1, keepdim=True)}
        >>> problem = ModuleProblem(torch.nn.Linear(3, 1), torch.nn.functional.mse_loss, sampler)
        >>> instances, params = sample_instances(problem, 5, torch.Generator().manual_seed(0))
        >>> sorted(params), params["weight"].shape, batch_loss(problem, instances, params, 0).shape
        (['bias', 'weight'], torch.Size([5, 1, 3]), torch.Size([5]))
    """

    def __init__(self, module: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor],
                 sampler: Callable[[torch.Generator], Instance],
                 batch: Callable[[Instance, int], tuple[Tensor, Tensor]] | None = None,
                 vectorize: bool = True) -> None:  # fmt: skip
        if not any(True for _ in module.parameters()):
            raise ValueError(f"module problem: {type(module).__name__} has no parameters to optimise")
        self.module, self.loss_fn, self.sampler, self.batch = module, loss_fn, sampler, batch
        self.vectorize = vectorize
        fixed = [f"{m_name}.{p_name}" if m_name else p_name for m_name, m in module.named_modules()
                 if not callable(getattr(m, "reset_parameters", None))
                 for p_name, _ in m.named_parameters(recurse=False)]  # fmt: skip
        if fixed:  # every instance would start from the module's own values of these: no fresh initialisation
            warnings.warn(
                f"module problem: {fixed[:4]}{' ...' if len(fixed) > 4 else ''} belong to modules without "
                f"reset_parameters(), so every instance starts from the same values for them (only the other "
                f"weights are freshly initialised); give their module a reset_parameters() that redraws them",
                stacklevel=2,
            )

    def sample(self, generator: torch.Generator) -> Instance:
        instance = self.sampler(generator)
        if not isinstance(instance, dict) or not all(isinstance(v, Tensor) for v in instance.values()):
            raise TypeError(f"module problem: the sampler must return a dict of tensors, got {type(instance).__name__}")
        return instance

    def init_params(self, instance: Instance, generator: torch.Generator) -> Params:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        fresh = copy.deepcopy(self.module)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in fresh.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
        return {k: v.detach().clone() for k, v in fresh.named_parameters()}

    def loss(self, instance: Instance, params: Params, step: int) -> Tensor:
        if self.batch is not None:
            inputs, targets = self.batch(instance, step)
        else:
            if "x" not in instance or "y" not in instance:
                raise KeyError(f"module problem: the instance has {sorted(instance)}; without batch= it needs 'x' "
                               f"(inputs) and 'y' (targets)")  # fmt: skip
            inputs, targets = instance["x"], instance["y"]
        out = torch.func.functional_call(self.module, params, (inputs,))
        return self.loss_fn(out, targets)


def _stack(dicts: list[dict[str, Tensor]], what: str) -> dict[str, Tensor]:
    keys = list(dicts[0])
    for i, d in enumerate(dicts):
        if list(d) != keys:
            raise ValueError(f"{what} {i} has keys {list(d)}, instance 0 has {keys}; every draw must have the same")
    try:
        return {k: torch.stack([d[k] for d in dicts]) for k in keys}
    except RuntimeError as e:
        raise ValueError(f"{what}s of a batch must have equal shapes to be stacked ({e})") from None


def sample_instances(problem: Problem, n: int, generator: torch.Generator,
                     device: torch.device | str | None = None) -> tuple[Instance, Params]:  # fmt: skip
    """Draw ``n`` independent instances and their initial parameters (instance ``i``, then its parameters, in order).

    Args:
        problem (Problem): the problem.
        n (int): instances.
        generator (torch.Generator): the only source of randomness, so a seed fixes the batch.
        device (torch.device | str | None, Optional): where the tensors go. Default: None (where they were made).

    Returns:
        tuple[dict, dict]: instances and parameters, every tensor with a leading ``[n, ...]`` dimension.
    """
    if n < 1:
        raise ValueError(f"sample_instances: n must be >= 1, got {n}")
    instances, params = [], []
    for _ in range(n):
        inst = problem.sample(generator)
        instances.append(inst)
        params.append(problem.init_params(inst, generator))
    inst, par = _stack(instances, "instance"), _stack(params, "parameter dict")
    if device is not None:
        inst, par = {k: v.to(device) for k, v in inst.items()}, {k: v.to(device) for k, v in par.items()}
    return inst, par


def batch_loss(problem: Problem, instances: Instance, params: Params, step: int,
               vectorize: bool | None = None) -> Tensor:  # fmt: skip
    """Per-instance losses ``[n]`` of a stacked batch at optimizee step ``step``, differentiable in ``params``.

    Args:
        problem (Problem): the problem.
        instances (dict[str, Tensor]): stacked instances ``[n, ...]``.
        params (dict[str, Tensor]): stacked parameters ``[n, ...]``.
        step (int): the optimizee step (selects a stochastic problem's minibatch).
        vectorize (bool | None, Optional): vmap over instances (True) or loop (False). Default: None (the problem's
            ``vectorize`` attribute).
    """
    use_vmap = getattr(problem, "vectorize", False) if vectorize is None else vectorize
    if use_vmap:
        return torch.func.vmap(lambda inst, p: problem.loss(inst, p, step))(instances, params)
    n = next(iter(params.values())).shape[0]
    return torch.stack([problem.loss({k: v[i] for k, v in instances.items()}, {k: v[i] for k, v in params.items()},
                                     step) for i in range(n)])  # fmt: skip

