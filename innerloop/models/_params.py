"""Parameter counting, one meaning library-wide."""

from __future__ import annotations

from torch import nn

__all__ = ["count_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters of ``model``, each tensor counted once: tied weights (an LM head sharing the embedding)
    count once, and frozen parameters (``requires_grad=False``) count too.

    Args:
        model (nn.Module): any module.
    Returns:
        int: the sum of ``numel()`` over the distinct parameter tensors.
    """
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
