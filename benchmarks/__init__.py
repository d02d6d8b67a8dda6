"""mp_rl benchmarks: each runs its baselines in the same run and prints ratios."""
