"""Causal LM over any registered mixer (TTT-Linear, TTT-MLP, attention, ...), Transformer or Mamba backbone."""

from .configuration_lm import BACKBONES, PRESETS, LMConfig
from .decoding import StaticLMState
from .modeling_lm import BlockState, CausalLM, CausalLMOutput, LMState, check_sampling, sample_next

__all__ = ["BACKBONES", "PRESETS", "BlockState", "CausalLM", "CausalLMOutput", "LMConfig", "LMState", "StaticLMState",
           "check_sampling", "sample_next"]
