"""Running the encoder: batching, the one runner for embed and perturb, OOM splitting, the
profiler and torchrun helpers."""
