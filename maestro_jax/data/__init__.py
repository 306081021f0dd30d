"""Synthetic corpus, tokenizer, seqio tasks and mixtures, and the multi-stream batcher."""
