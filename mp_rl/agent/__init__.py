"""The agent: actor and learner objects, Q-networks, n-step rows, environments, checkpoints, evaluation."""
