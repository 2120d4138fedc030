"""World-model training: the loop and its setup, token clips, resumable state and held-out metrics."""
