"""World-model training: the loop, token clips, resumable state and held-out metrics."""
