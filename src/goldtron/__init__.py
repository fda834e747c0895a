"""goldtron: a Megatron-style GPT trainer and the golden-value gate that judges it."""

__version__ = "0.1.0"
