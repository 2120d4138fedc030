"""The DMLab-style maze: labmaze layouts, DMLab textures rendered by MiniWorld, the Gymnasium env."""
