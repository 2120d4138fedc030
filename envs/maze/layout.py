"""Maze layouts from DeepMind Lab's generator (``labmaze``) and the DMLab textures shipped with it.

A :class:`MazeLayout` is a plain, picklable description of one maze: the text grid (``*`` wall,
``P`` spawn, ``G`` goal candidate, space free), the per-cell room variation letters, and the
texture choice. The renderer (``envs/maze_render.py``) and the collision code only read it.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import numpy as np

WALL = "*"


@dataclasses.dataclass(frozen=True)
class MazeConfig:
    """Settings of the labmaze generator and the look of the maze.

    Attributes:
        height, width: grid size in cells (odd numbers; DMLab's small maze is 11×11).
        max_rooms: rooms carved into the maze; each room gets its own floor texture.
        room_min_size, room_max_size: room side lengths in cells.
        extra_connection_probability: chance of extra openings (loops) between corridors.
        styles: DMLab texture styles (1–5) to draw from; one style per maze.
        sky: DMLab sky boxes (1–3) to draw from.
    """

    height: int = 11
    width: int = 11
    max_rooms: int = 4
    room_min_size: int = 3
    room_max_size: int = 5
    extra_connection_probability: float = 0.0
    styles: tuple[int, ...] = (1, 2, 3, 4, 5)
    sky: tuple[int, ...] = (1, 2, 3)


PRESETS: dict[str, MazeConfig] = {
    "small": MazeConfig(),
    "large": MazeConfig(height=15, width=15, max_rooms=6),
}


@dataclasses.dataclass(frozen=True)
class MazeLayout:
    """One generated maze: grid, room variations and textures. Cell (r, c) spans x∈[c, c+1], z∈[r, r+1]."""

    grid: tuple[str, ...]
    variations: tuple[str, ...]
    maze_seed: int
    style: int
    wall_texture: str
    floor_textures: dict  # variation letter ('.' = corridor) -> texture file name
    sky: int

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.grid), len(self.grid[0])

    @property
    def text(self) -> str:
        return "\n".join(self.grid)

    def is_wall(self, r: int, c: int) -> bool:
        h, w = self.shape
        return not (0 <= r < h and 0 <= c < w) or self.grid[r][c] == WALL

    def cells(self, chars: str) -> list[tuple[int, int]]:
        return [(r, c) for r, row in enumerate(self.grid) for c, ch in enumerate(row) if ch in chars]

    def free_cells(self) -> list[tuple[int, int]]:
        return self.cells(" PG")

    def wall_mask(self) -> np.ndarray:
        """(H, W) bool array, True where the cell is a wall."""
        return np.array([[ch == WALL for ch in row] for row in self.grid], dtype=bool)


def assets_dir() -> Path:
    """Folder of DMLab textures inside the labmaze wheel."""
    import labmaze

    return Path(labmaze.__file__).parent / "assets"


@cache
def style_textures(style: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wall, floor) texture file names of a DMLab style, sorted: labmaze's own lists.

    The style folders also hold light-map masks (``*_light*_m.png``, nearly black); DeepMind Lab
    never draws them as diffuse textures, so a glob over the folder would paint black walls/floors.
    """
    from labmaze import assets

    name = f"style_{style:02d}"
    if name not in assets.MAZE_STYLES:
        raise ValueError(f"DMLab texture style {style} not found in {assets_dir()} (valid styles: 1–5)")
    walls = tuple(sorted(Path(p).name for p in assets.get_wall_texture_paths(name).values()))
    floors = tuple(sorted(Path(p).name for p in assets.get_floor_texture_paths(name).values()))
    return walls, floors


def generate_layout(cfg: MazeConfig, maze_seed: int) -> MazeLayout:
    """Generate a maze with labmaze and draw its textures; the same seed gives the same maze."""
    import labmaze

    maze = labmaze.RandomMaze(
        height=cfg.height, width=cfg.width, max_rooms=cfg.max_rooms,
        room_min_size=cfg.room_min_size, room_max_size=cfg.room_max_size,
        extra_connection_probability=cfg.extra_connection_probability,
        spawns_per_room=1, objects_per_room=1, random_seed=int(maze_seed) % (2**31 - 1),
    )
    grid = tuple(str(maze.entity_layer).strip("\n").split("\n"))
    variations = tuple(str(maze.variations_layer).strip("\n").split("\n"))
    rng = np.random.default_rng(maze_seed)
    style = int(rng.choice(cfg.styles))
    walls, floors = style_textures(style)
    letters = sorted({ch for row in variations for ch in row} - {"."})
    # rooms get distinct floors where the style has enough; corridors ('.') get one more
    picks = rng.permutation(len(floors))
    floor_textures = {ch: floors[picks[(i + 1) % len(floors)]] for i, ch in enumerate(letters)}
    floor_textures["."] = floors[picks[0]]
    return MazeLayout(
        grid=grid, variations=variations, maze_seed=int(maze_seed), style=style,
        wall_texture=str(rng.choice(walls)), floor_textures=floor_textures, sky=int(rng.choice(cfg.sky)),
    )


def layout_from_text(text: str, maze_seed: int = 0, cfg: MazeConfig | None = None) -> MazeLayout:
    """Build a layout from a text grid (``*`` walls), e.g. one stored in a dataset, with seeded textures."""
    grid = tuple(line for line in text.strip("\n").split("\n"))
    if len({len(r) for r in grid}) != 1 or not grid:
        raise ValueError("maze layout text must be a non-empty rectangle of characters")
    base = generate_layout(cfg or MazeConfig(), maze_seed)
    variations = tuple("." * len(grid[0]) for _ in grid)
    return dataclasses.replace(base, grid=grid, variations=variations)
