"""Run plumbing of the world-model layer: seeding, device choice, CPU threads, stop signals, run logs,
resumable training states, the EMA of the weights, and where the shipped model lives."""
