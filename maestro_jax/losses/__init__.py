"""Transducer, CTC, regression and masked-prediction losses. Each returns per-example values plus a validity mask."""
