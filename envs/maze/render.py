"""First-person OpenGL rendering of a :class:`~envs.maze.layout.MazeLayout`, headless through MiniWorld.

MiniWorld supplies the headless pyglet/EGL context and its multisampled ``FrameBuffer``; the scene
is ours: one textured quad per exposed wall face and per floor cell, a DMLab sky box, and a goal
object, compiled into a GL display list. Rebuilding a maze is therefore only a display-list
compile (a few ms), and textures are decoded once per process and kept on the GPU side.
"""

from __future__ import annotations

import ctypes
import math
import os
import warnings

import numpy as np

from envs.maze.layout import MazeLayout, assets_dir

_GL = None


def _gl():
    """Import pyglet/MiniWorld GL lazily, headless (PYGLET_HEADLESS must be set before import)."""
    global _GL
    if _GL is None:
        os.environ.setdefault("PYGLET_HEADLESS", "1")
        import pyglet

        if os.environ.get("PYGLET_HEADLESS") == "1":
            pyglet.options["headless"] = True
        # pyglet otherwise calls glGetError after every GL call: ~100 calls a frame, a fifth of a step
        pyglet.options["debug_gl"] = os.environ.get("MASKFLOW_DEBUG_GL") == "1"
        from miniworld import opengl  # noqa: F401  (pulls pyglet.gl with the right options)
        from pyglet import gl

        _GL = (pyglet, gl, opengl)
    return _GL


# Relative brightness of wall faces by orientation: DMLab bakes soft lighting into its maps;
# shading faces differently keeps corners readable without a lighting model.
_FACE_SHADE = {"n": 0.80, "s": 0.92, "e": 1.0, "w": 0.70}
_SKY_FACES = ("ft", "bk", "lf", "rt", "up")
TEXTURE_SIZE = 256


class MazeRenderer:
    """Owns one GL context, a frame buffer and a texture cache; draws a layout from a camera pose."""

    def __init__(self, width: int = 64, height: int = 64, fov_y: float = 60.0, wall_height: float = 1.0,
                 cam_height: float = 0.5, multisample: int = 4):
        pyglet, gl, opengl = _gl()
        self.width, self.height, self.fov_y = width, height, fov_y
        self.wall_height, self.cam_height = wall_height, cam_height
        self._window = pyglet.window.Window(width=1, height=1, visible=False)
        self._fb = opengl.FrameBuffer(width, height, multisample)
        self._textures: dict[str, int] = {}
        self._list = None
        self._sky = None
        self._goal = None

    # -- textures -------------------------------------------------------------------------------
    def _texture(self, rel_path: str) -> int:
        """GL texture id of a PNG under the labmaze assets folder, decoded and uploaded once."""
        if rel_path in self._textures:
            return self._textures[rel_path]
        from PIL import Image

        _, gl, _ = _gl()
        with warnings.catch_warnings():  # some DMLab PNGs are palette images with transparency
            warnings.simplefilter("ignore", UserWarning)
            img = Image.open(assets_dir() / rel_path).convert("RGB")
        img = img.resize((TEXTURE_SIZE, TEXTURE_SIZE),
                                                                         Image.BILINEAR)
        data = np.ascontiguousarray(np.asarray(img, dtype=np.uint8)[::-1])  # GL rows start at the bottom
        tex = gl.GLuint(0)
        gl.glGenTextures(1, ctypes.byref(tex))
        gl.glBindTexture(gl.GL_TEXTURE_2D, tex)
        gl.glTexImage2D(gl.GL_TEXTURE_2D, 0, gl.GL_RGB, TEXTURE_SIZE, TEXTURE_SIZE, 0, gl.GL_RGB,
                        gl.GL_UNSIGNED_BYTE, data.ctypes.data_as(ctypes.POINTER(gl.GLubyte)))
        gl.glGenerateMipmap(gl.GL_TEXTURE_2D)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MAG_FILTER, gl.GL_LINEAR)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_MIN_FILTER, gl.GL_LINEAR_MIPMAP_LINEAR)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_S, gl.GL_REPEAT)
        gl.glTexParameteri(gl.GL_TEXTURE_2D, gl.GL_TEXTURE_WRAP_T, gl.GL_REPEAT)
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        self._textures[rel_path] = tex.value
        return tex.value

    # -- scene ----------------------------------------------------------------------------------
    def build(self, layout: MazeLayout, goal: tuple[float, float] | None) -> None:
        """Compile the static scene of ``layout`` into a display list (the cheap part of a reset)."""
        _, gl, _ = _gl()
        self._window.switch_to()
        style = f"style_{layout.style:02d}"
        wall_tex = self._texture(f"{style}/{layout.wall_texture}")
        floor_tex = {k: self._texture(f"{style}/{v}") for k, v in layout.floor_textures.items()}
        self._sky = [self._texture(f"sky_{layout.sky:02d}/{f}.png") for f in _SKY_FACES]
        if self._list is None:
            self._list = gl.glGenLists(1)
        gl.glNewList(self._list, gl.GL_COMPILE)
        gl.glEnable(gl.GL_TEXTURE_2D)
        rows, cols = layout.shape
        wh = self.wall_height
        # floors, grouped by texture to limit binds
        by_tex: dict[int, list[tuple[int, int]]] = {}
        for r, c in layout.free_cells():
            by_tex.setdefault(floor_tex.get(layout.variations[r][c], floor_tex["."]), []).append((r, c))
        for tex, cells in by_tex.items():
            gl.glBindTexture(gl.GL_TEXTURE_2D, tex)
            gl.glColor3f(1, 1, 1)
            gl.glBegin(gl.GL_QUADS)
            for r, c in cells:
                for dx, dz in ((0, 0), (0, 1), (1, 1), (1, 0)):
                    gl.glTexCoord2f((c + dx) * 0.5, (r + dz) * 0.5)
                    gl.glVertex3f(c + dx, 0.0, r + dz)
            gl.glEnd()
        # wall faces: only where a free cell meets a wall cell
        gl.glBindTexture(gl.GL_TEXTURE_2D, wall_tex)
        gl.glBegin(gl.GL_QUADS)
        for r, c in layout.free_cells():
            for side, (dr, dc) in (("n", (-1, 0)), ("s", (1, 0)), ("w", (0, -1)), ("e", (0, 1))):
                if not layout.is_wall(r + dr, c + dc):
                    continue
                # the face lies on the shared edge; listed counter-clockwise as seen from the free cell
                if side == "n":
                    p0, p1 = (c + 1, r), (c, r)
                elif side == "s":
                    p0, p1 = (c, r + 1), (c + 1, r + 1)
                elif side == "w":
                    p0, p1 = (c, r), (c, r + 1)
                else:
                    p0, p1 = (c + 1, r + 1), (c + 1, r)
                s = _FACE_SHADE[side]
                gl.glColor3f(s, s, s)
                for (x, z), u, y in ((p0, 0.0, 0.0), (p1, 1.0, 0.0), (p1, 1.0, wh), (p0, 0.0, wh)):
                    gl.glTexCoord2f(u, y / wh)
                    gl.glVertex3f(x, y, z)
        gl.glEnd()
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        gl.glEndList()
        self._goal = goal

    def _draw_sky(self) -> None:
        """A unit sky box around the camera, drawn first with depth writes off."""
        _, gl, _ = _gl()
        gl.glDepthMask(gl.GL_FALSE)
        gl.glColor3f(1, 1, 1)
        s = 1.0
        # (texture, four corners) for front, back, left, right, up
        faces = (
            ((-s, -s, -s), (s, -s, -s), (s, s, -s), (-s, s, -s)),
            ((s, -s, s), (-s, -s, s), (-s, s, s), (s, s, s)),
            ((-s, -s, s), (-s, -s, -s), (-s, s, -s), (-s, s, s)),
            ((s, -s, -s), (s, -s, s), (s, s, s), (s, s, -s)),
            ((-s, s, -s), (s, s, -s), (s, s, s), (-s, s, s)),
        )
        uvs = ((0, 0), (1, 0), (1, 1), (0, 1))
        for tex, corners in zip(self._sky, faces):
            gl.glBindTexture(gl.GL_TEXTURE_2D, tex)
            gl.glBegin(gl.GL_QUADS)
            for (u, v), p in zip(uvs, corners):
                gl.glTexCoord2f(u, v)
                gl.glVertex3f(*p)
            gl.glEnd()
        gl.glBindTexture(gl.GL_TEXTURE_2D, 0)
        gl.glDepthMask(gl.GL_TRUE)

    def _draw_goal(self) -> None:
        _, gl, _ = _gl()
        if self._goal is None:
            return
        x, z = self._goal
        h, y0 = 0.18, 0.12
        gl.glDisable(gl.GL_TEXTURE_2D)
        gl.glBegin(gl.GL_QUADS)
        for shade, quad in (
            (1.0, ((-h, -h), (h, -h))), (0.8, ((h, -h), (h, h))),
            (0.6, ((h, h), (-h, h))), (0.9, ((-h, h), (-h, -h))),
        ):
            gl.glColor3f(0.95 * shade, 0.75 * shade, 0.1 * shade)  # a golden "goal" object
            (ax, az), (bx, bz) = quad
            for px, pz, py in ((ax, az, y0), (bx, bz, y0), (bx, bz, y0 + 2 * h), (ax, az, y0 + 2 * h)):
                gl.glVertex3f(x + px, py, z + pz)
        gl.glColor3f(1.0, 0.9, 0.2)
        for px, pz in ((-h, -h), (-h, h), (h, h), (h, -h)):
            gl.glVertex3f(x + px, y0 + 2 * h, z + pz)
        gl.glEnd()
        gl.glEnable(gl.GL_TEXTURE_2D)

    def render(self, x: float, z: float, heading: float) -> np.ndarray:
        """Render the view from (x, z) looking along ``heading`` (radians, 0 = +x, CCW seen from above).

        Returns a (height, width, 3) uint8 array (a fresh copy).
        """
        _, gl, _ = _gl()
        assert self._list is not None, "build() a layout before rendering"
        self._window.switch_to()
        self._fb.bind()
        gl.glClearColor(0.0, 0.0, 0.0, 1.0)
        gl.glClear(gl.GL_COLOR_BUFFER_BIT | gl.GL_DEPTH_BUFFER_BIT)
        gl.glDisable(gl.GL_LIGHTING)
        gl.glEnable(gl.GL_DEPTH_TEST)
        gl.glDisable(gl.GL_CULL_FACE)  # walls are only ever seen from the free side
        gl.glEnable(gl.GL_TEXTURE_2D)
        gl.glMatrixMode(gl.GL_PROJECTION)
        gl.glLoadIdentity()
        gl.gluPerspective(self.fov_y, self.width / float(self.height), 0.02, 100.0)
        gl.glMatrixMode(gl.GL_MODELVIEW)
        gl.glLoadIdentity()
        dx, dz = math.cos(heading), -math.sin(heading)
        gl.gluLookAt(0, 0, 0, dx, 0, dz, 0, 1, 0)
        self._draw_sky()
        gl.glLoadIdentity()
        y = self.cam_height
        gl.gluLookAt(x, y, z, x + dx, y, z + dz, 0, 1, 0)
        gl.glCallList(self._list)
        self._draw_goal()
        return self._fb.resolve().copy()

    def close(self) -> None:
        """Release the GL objects and the hidden window (the context goes with it)."""
        if self._window is not None:
            _, gl, _ = _gl()
            self._window.switch_to()
            if self._list is not None:
                gl.glDeleteLists(self._list, 1)
            if self._textures:
                ids = (gl.GLuint * len(self._textures))(*self._textures.values())
                gl.glDeleteTextures(len(self._textures), ids)
            self._window.close()
            self._window, self._list, self._textures = None, None, {}
