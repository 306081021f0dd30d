"""Training objectives: gin-configurable functions (model, variables, batch, rng, step) -> (loss, metrics)."""
