"""Run plumbing of the world-model layer: seeding, device choice, CPU threads, stop signals, run logs."""
