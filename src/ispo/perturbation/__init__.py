"""In-silico perturbation: perturbed sequences, the engine and statistics over its results."""
