"""The MaskFlow objective: masking schedules, frame-level masking and the loss."""
