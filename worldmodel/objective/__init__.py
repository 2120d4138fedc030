"""The MaskFlow objective: masking schedules, frame-level masking, the clip batch and the loss."""
