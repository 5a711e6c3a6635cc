"""Reports: a small document model and ``ispo report`` over benchmark, evaluate, tune and
perturb results."""
