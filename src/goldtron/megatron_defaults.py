"""Megatron's defaults that more than one folder applies: the flags' defaults (config/parser.py)
and what the data code assumes when a caller builds datasets without those flags (data/provider.py)."""

SEED = 1234
SPLIT = "969,30,1"  # train,validation,test document weights
