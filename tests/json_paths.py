"""Test helper: the strings of a JSON record that are absolute paths of some machine."""

from __future__ import annotations

from typing import Any


def absolute_paths(record: Any) -> list[str]:
    """Every string in ``record`` (nested dicts and lists) that is a POSIX, home or Windows absolute path."""
    if isinstance(record, dict):
        return [s for v in record.values() for s in absolute_paths(v)]
    if isinstance(record, list):
        return [s for v in record for s in absolute_paths(v)]
    if isinstance(record, str) and (record.startswith(("/", "~")) or record[1:3] == ":\\"):
        return [record]
    return []
