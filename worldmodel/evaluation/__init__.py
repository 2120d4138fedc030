"""`maskflow eval`: scoring, the report, paired statistics, and the action check."""
