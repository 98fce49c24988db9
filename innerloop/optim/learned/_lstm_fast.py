"""The no-autograd fast path of :class:`innerloop.optim.learned.LSTMRule` (what ``LearnedOptimizer.step`` runs).

Same function as ``LSTMRule.update``, computed for speed when no gradient is needed:

- one matmul of ``[x, h]`` against ``[W_ih, W_hh]^T`` per layer and gate kind (sigmoid gates, cell gate), with
  ``torch.addmm`` and the bias ``b_ih + b_hh`` (the differentiable path does two ``F.linear`` and adds them; the
  sums are regrouped, so results agree to rounding: ~1e-16 relative in float64, ~1e-6 in float32);
- coordinates in chunks of ``chunk`` rows per parameter, so the ``[chunk, 4H]`` gates stay in cache instead of
  streaming ``[P, 4H]`` intermediates through memory, and no ``[P, L, H]`` concatenation of the states;
- gate nonlinearities in place, results written straight into preallocated new states.

The inputs are not modified: the new states are new tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from innerloop.optim.learned._common import Params, compute_dtype

__all__ = ["CHUNK", "fused_weights", "lstm_step_inference"]

CHUNK = 4096  # coordinates per chunk: the [CHUNK, 4H] gates of 20 units are 1.3 MB in float32


def fused_weights(cells: nn.ModuleList, out: nn.Linear, dtype: torch.dtype, device: torch.device) -> tuple:
    """Per layer ``(Ws^T [in + H, 3H], bs [3H], Wg^T [in + H, H], bg [H])``: the input, forget and output gates
    (sigmoid) then the cell gate (tanh) of ``W = [W_ih, W_hh]``, ``b = b_ih + b_hh``; then the output's
    ``(w^T [H, 1], b [1])``; all detached, in ``dtype`` on ``device``. Two matmuls per layer rather than one, so
    each nonlinearity runs on a contiguous block (strided ones are ~2x slower on CPU)."""
    layers = []
    for cell in cells:
        hid = cell.hidden_size
        w = torch.cat([cell.weight_ih, cell.weight_hh], dim=1).detach().to(device=device, dtype=dtype)  # [4H, in+H]
        b = cell.bias_ih.detach().to(device=device, dtype=dtype) + cell.bias_hh.detach().to(device=device, dtype=dtype)
        sig = torch.cat([torch.arange(2 * hid), torch.arange(3 * hid, 4 * hid)]).to(device)  # i, f, o
        cg = slice(2 * hid, 3 * hid)
        layers.append((w[sig].t().contiguous(), b[sig], w[cg].t().contiguous(), b[cg].contiguous()))
    w_out = out.weight.detach().to(device=device, dtype=dtype).t().contiguous()
    return layers, (w_out, out.bias.detach().to(device=device, dtype=dtype))


@torch.no_grad()
def lstm_step_inference(
    rule: nn.Module, grads: Params, state: dict[str, dict[str, Tensor]], params: Params, chunk: int = CHUNK
) -> tuple[Params, dict[str, dict[str, Tensor]]]:
    """``rule.update(grads, state, params, step)`` of an :class:`LSTMRule` without autograd (inputs checked there).

    Args:
        rule (LSTMRule): the rule (its weights, ``features``, ``scale``).
        grads (dict[str, Tensor]): gradients, any shapes; state (dict): ``{name: {"h", "c": [numel, L, H]}}``.
        params (dict[str, Tensor]): the parameters (their dtypes: updates are cast to them).
        chunk (int): coordinates per chunk. Default: :data:`CHUNK`.

    Returns:
        (dict[str, Tensor], dict): updates of ``grads[k]``'s shape in ``params[k]``'s dtype, and the new state.
    """
    dtype = compute_dtype(grads)
    device = next(iter(grads.values())).device
    layers, (w_out, b_out) = fused_weights(rule.cells, rule.out, dtype, device)
    hidden = rule.hidden_size
    n_in = layers[0][0].shape[0] - hidden  # Ws^T is [in + H, 3H]
    updates, new_state = {}, dict(state)
    for k, g_full in grads.items():
        g_flat = g_full.reshape(-1)
        n = g_flat.numel()
        h_old, c_old = state[k]["h"], state[k]["c"]
        h_new = torch.empty(h_old.shape, dtype=dtype, device=device)
        c_new = torch.empty(c_old.shape, dtype=dtype, device=device)
        upd = torch.empty(n, dtype=dtype, device=device)
        xh = [torch.empty(min(chunk, n), (n_in if i == 0 else hidden) + hidden, dtype=dtype, device=device)
              for i in range(len(layers))]  # fmt: skip
        for r0 in range(0, n, chunk):
            r1 = min(r0 + chunk, n)
            b = r1 - r0
            x = rule.features(g_flat[r0:r1].to(dtype))  # [b, F]
            for layer, (ws_t, bs, wg_t, bg) in enumerate(layers):
                buf = xh[layer][:b]
                width = buf.shape[1] - hidden
                buf[:, :width] = x
                buf[:, width:] = h_old[r0:r1, layer]
                gates = torch.addmm(bs, buf, ws_t).sigmoid_()  # [b, 3H]: input, forget, output
                i, f, o = gates.split(hidden, dim=1)
                gg = torch.addmm(bg, buf, wg_t).tanh_()  # [b, H]: cell
                c = f * c_old[r0:r1, layer].to(dtype)
                c.addcmul_(i, gg)
                x = o * torch.tanh(c)  # [b, H]
                c_new[r0:r1, layer] = c
                h_new[r0:r1, layer] = x
            upd[r0:r1] = torch.addmm(b_out, x, w_out).squeeze(1) * rule.scale
        updates[k] = upd.reshape(g_full.shape).to(params[k].dtype)
        new_state[k] = {"h": h_new, "c": c_new}
    return updates, new_state
