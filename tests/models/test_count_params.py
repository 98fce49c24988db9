"""``count_params``: one meaning library-wide (each parameter tensor once: tied weights once, frozen ones too)."""

from torch import nn

from innerloop.models import CausalLM, LMConfig, count_params
from innerloop.synth import SynthModel


def test_tied_weights_count_once_and_frozen_ones_count():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head, "norm": nn.LayerNorm(4)})
    assert count_params(model) == 10 * 4 + 2 * 4
    model["norm"].requires_grad_(False)
    assert count_params(model) == 10 * 4 + 2 * 4


def test_lm_and_synth_models_keep_their_counts():
    """What runs reported before (sum over ``model.parameters()``, which lists a tied tensor once)."""
    lm = CausalLM(LMConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, mixer="gru"))  # fmt: skip
    assert count_params(lm) == sum(p.numel() for p in lm.parameters())
    synth = SynthModel("lstm", 16, 2, 2, vocab_size=10, out_features=10)
    assert count_params(synth) == sum(p.numel() for p in synth.parameters() if p.requires_grad)
