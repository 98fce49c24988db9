"""Side-by-side parity of innerloop's TTT LM with the authors' PyTorch code (ttt-lm-pytorch ``ttt.py``).

Builds tiny random official ``TTTForCausalLM`` models for the four variants (TTT-Linear/MLP x Transformer/Mamba
backbone), perturbs their zero/one-initialised parameters so every parameter matters, converts each state dict with
``innerloop.load_official_ttt`` and prints max |Δlogits| for the full forward (lengths that are and are not multiples
of the mini-batch) and for token-by-token decoding against the authors' cached decode.

Needs ``pip install transformers`` (the authors' file imports it) and a local copy of their ``ttt.py``:

    python scripts/parity_official.py /path/to/ttt.py [--dtype float32|float64] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys

import torch

from innerloop import load_official_ttt


def import_official(path: str):
    spec = importlib.util.spec_from_file_location("ttt_official", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["ttt_official"] = mod
    spec.loader.exec_module(mod)
    return mod


def build_official(mod, layer_type: str, mamba: bool, dtype: torch.dtype, seed: int):
    torch.manual_seed(seed)
    cfg = mod.TTTConfig(
        vocab_size=99, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        ttt_layer_type=layer_type, ttt_base_lr=1.0 if layer_type == "linear" else 0.1, mini_batch_size=16,
        pre_conv=mamba, share_qk=mamba, use_gate=mamba, conv_kernel=4, use_cache=False,
    )
    model = mod.TTTForCausalLM(cfg).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("W1", "W2", "embed_tokens.weight")):
                p.mul_(25.0)  # the 0.02 init leaves tiny logits and a nearly inert inner model
            elif "norm" in name or "bias" in name or "learnable" in name:
                p.add_(0.2 * torch.randn_like(p))
    return cfg, model


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@torch.no_grad()
def run_variant(mod, layer_type: str, mamba: bool, dtype: torch.dtype, mode: str) -> dict[str, float]:
    cfg, official = build_official(mod, layer_type, mamba, dtype, seed=0)
    ours = load_official_ttt(cfg.to_dict(), official.state_dict(), mode=mode, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    res: dict[str, float] = {}
    for L in (48, 37):
        ids = torch.randint(0, cfg.vocab_size, (2, L), generator=gen)
        ref = official(input_ids=ids).logits
        res[f"forward_L{L}"] = max_abs(ref, ours(ids).logits)
        res[f"scale_L{L}"] = ref.abs().max().item()
    # Decode: prefill 5 tokens, then 35 single-token steps (crossing two mini-batch boundaries).
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=gen)
    out = official(input_ids=ids[:, :5], use_cache=True)
    ref_steps, cache = [out.logits], out.cache_params
    mine = ours(ids[:, :5])
    our_steps, state = [mine.logits], mine.state
    for t in range(5, 40):
        out = official(input_ids=ids[:, t : t + 1], cache_params=cache, use_cache=True)
        ref_steps.append(out.logits)
        cache = out.cache_params
        mine = ours(ids[:, t : t + 1], state)
        our_steps.append(mine.logits)
        state = mine.state
    ref_dec, our_dec = torch.cat(ref_steps, 1), torch.cat(our_steps, 1)
    res["decode_vs_official_decode"] = max_abs(ref_dec, our_dec)
    res["official_decode_vs_official_forward"] = max_abs(ref_dec, official(input_ids=ids).logits)
    res["our_decode_vs_official_forward"] = max_abs(our_dec, official(input_ids=ids).logits)
    # Multi-token chunks starting mid-mini-batch (the authors' cache cannot do this) vs their full forward.
    chunks, state, start = [], None, 0
    for n in (5, 7, 9, 19):
        mine = ours(ids[:, start : start + n], state)
        chunks.append(mine.logits)
        state, start = mine.state, start + n
    res["our_odd_chunks_vs_official_forward"] = max_abs(torch.cat(chunks, 1), official(input_ids=ids).logits)
    # Sensitivity: how far the logits move when inner learning is switched off (so the Δs above are meaningful).
    for m in ours.modules():
        if hasattr(m, "lr_mult"):
            m.lr_mult = 0.0
    res["no_ttt_learning_vs_official_forward"] = max_abs(ours(ids).logits, official(input_ids=ids).logits)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official_path", nargs="?", default="/tmp/ttt_official.py")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--mode", default="chunk", choices=["chunk", "recurrent", "naive"])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    mod = import_official(args.official_path)
    dtype = getattr(torch, args.dtype)
    results = {}
    print(f"dtype {args.dtype}, innerloop mode {args.mode!r}; max |Δlogits| (scale = max |logit|)")
    for layer_type in ("linear", "mlp"):
        for mamba in (False, True):
            name = f"ttt_{layer_type}-{'mamba' if mamba else 'transformer'}"
            r = run_variant(mod, layer_type, mamba, dtype, args.mode)
            results[name] = r
            print(f"{name:24s} " + "  ".join(f"{k} {v:.2e}" for k, v in r.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtype": args.dtype, "mode": args.mode, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
