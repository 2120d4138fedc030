"""Dreaming: the `maskflow dream` verb, real context, MaskFlowDream-v0 and its vector env."""
