"""Typed exceptions for a caller's mistakes; each message says what is wrong and how to fix it."""


class MaskFlowError(ValueError):
    """Base class of every user-facing error in MaskFlow World."""


class ConfigError(MaskFlowError):
    """A wrong, missing or inconsistent configuration key."""


class CheckpointError(MaskFlowError):
    """A missing, corrupt or mismatched checkpoint."""


class DatasetError(MaskFlowError):
    """A missing, corrupt, truncated or mismatched dataset file."""


class SamplerSettingsError(MaskFlowError):
    """Sampler settings that cannot work (e.g. stride larger than window minus context)."""
