"""LLM scorers: per-class probabilities (not votes) from local or external LLMs, plain code."""
