"""Command-line tools for live and dead runs: `python -m mp_rl.tools.<name>`."""
