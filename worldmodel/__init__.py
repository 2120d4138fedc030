"""MaskFlow World: discrete-flow video world models for DeepMind-Lab-style mazes.

Importing this package has no side effects (no GL contexts, no torch global flags, no downloads).
"""

__version__ = "0.1.0"
