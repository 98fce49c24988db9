"""Optimizer parameter groups with the weight decay the model's authors used.

The rule is the authors', read from their training code, and carried by marks that the layers set
(``innerloop.layers.common.no_weight_decay``: names on the module, and Mamba's ``p._no_weight_decay = True``):

- TTT-Linear, TTT-MLP and the Transformer baseline: the TTT authors' JAX trainer decays every parameter (their
  models exclude nothing from the AdamW mask), so these layers mark nothing, and neither does the LM around them
  (embedding, RMSNorms, SwiGLU, the Mamba-backbone convs), which follows the same recipe.
- Mamba: the authors mark ``A_log`` and ``D``, and their trainer also leaves every bias undecayed; the Mamba layer
  marks those.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _undecayed(model: nn.Module) -> set[int]:
    """``id`` of every parameter a layer marked: by name on its module, or by the parameter's own attribute."""
    marked = {id(p) for p in model.parameters() if getattr(p, "_no_weight_decay", False)}
    for module in model.modules():
        marked.update(id(module.get_parameter(n)) for n in getattr(module, "_no_weight_decay_names", ()))
    return marked


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: the trainable parameters to decay (``weight_decay``) and the marked ones (0.0).

    Args:
        model (nn.Module): the model; shared (tied) parameters are counted once, frozen ones left out.
        weight_decay (float): decay of the first group.
    Returns:
        list[dict]: ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``,
        in ``named_parameters`` order, for ``torch.optim.AdamW(groups, ...)``.

    Examples:
        >>> from innerloop.layers import Mamba
        >>> groups = weight_decay_groups(Mamba(16, 1), 0.1)
        >>> [len(g["params"]) for g in groups], [g["weight_decay"] for g in groups]
        ([5, 4], [0.1, 0.0])
    """
    marked = _undecayed(model)
    decay, keep = [], []
    for p in model.parameters():
        if p.requires_grad:
            (keep if id(p) in marked else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def decayed_parameter_names(model: nn.Module) -> list[str]:
    """Names (as ``named_parameters``) of the trainable parameters :func:`weight_decay_groups` decays."""
    marked = _undecayed(model)
    return [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in marked]


__all__ = ["decayed_parameter_names", "weight_decay_groups"]
