"""Flax building blocks: attention, Conformer block, subsampling, lightweight convolution, pooling."""
