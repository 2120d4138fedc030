"""The Latte backbone, its layers and KV cache, checkpoint directories and release export."""
