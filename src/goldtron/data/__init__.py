"""Data: tokenizers, Megatron's indexed dataset (.bin/.idx), the GPT dataset, the sampler that
hands a step's samples to data-parallel ranks, preprocessing, and the small embedded corpus.

The trainer's entry points are in `provider.py` (`build_tokenizer`, `build_datasets`) and
`sampler.py` (`micro_batch_sample_indices`, `collate`). See docs/data.md.
"""
