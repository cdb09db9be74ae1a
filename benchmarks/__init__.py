"""Benchmarks of dwfc: accuracy against sparsity (DWF vs the baselines) and training overhead."""
