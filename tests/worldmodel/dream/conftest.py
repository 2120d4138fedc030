"""The tiny real checkpoint and its frames dataset as the string paths the dream env's arguments take."""

from __future__ import annotations

import pytest


@pytest.fixture
def ckpt(tiny_world_checkpoint):
    return str(tiny_world_checkpoint)


@pytest.fixture
def data(tiny_frames_dataset):
    return str(tiny_frames_dataset)
