"""Procedural indoor RGB-D scenes written in the official NYUD-v2 file formats.

Each frame is a random room (floor, four walls, ceiling) with furniture built from boxes (bed,
table, chairs, sofa, cabinets, a door) and a few small unlabelled clutter boxes, seen by a
pinhole camera with NYUD-like intrinsics and ray-cast in numpy (one vectorised slab test per box
over the pixels of its screen window). Depth is exact z-depth in metres (stored to 1 mm, the
Kinect's and the converted PNG's unit); labels are NYUD raw label ids (the ``names`` space, K=894).
RGB has Lambertian shading from a ceiling light, a class-specific texture pattern on each object,
a random hue per object and pixel noise, so a class is told apart by geometry, position and
texture, not by colour.

:func:`generate_synth_nyud` writes the same three files as the official release (so
``tools/prepare_nyud.py`` converts them unchanged) and an ImageFolder of object crops::

    OUT/nyu_depth_v2_labeled.mat   MATLAB v7.3: images, depths, labels, names
    OUT/splits.mat                 trainNdxs / testNdxs, 1-based
    OUT/classMapping40.mat         mapClass (1, 894), className
    OUT/class13Mapping.mat         classMapping13.labels13 (1, 40)
    OUT/crops/{train,val}/<class>/<frame:04d>_<k>.png

Frame ``i`` depends only on ``(seed, i)``, so the first frames do not change with ``frames``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from tqdm import tqdm

from cmim_dense.datasets.nyud import NYUD13_CLASSES, NYUD13_FROM_40, NYUD40_CLASSES
from cmim_dense.datasets.nyud_mat import (
    LabeledMatWriter,
    write_class13_mapping_mat,
    write_class_mapping_mat,
    write_splits_mat,
)

NUM_NAMES = 894
# The classes the generator draws, with their raw label ids in the real NYUD ``names`` list.
RAW_IDS = {
    "wall": 21,
    "floor": 11,
    "ceiling": 4,
    "cabinet": 3,
    "bed": 157,
    "chair": 5,
    "sofa": 83,
    "table": 19,
    "door": 28,
}
VOID_ID = 0
TRAIN_FRACTION = 795 / 1449  # as in the official split
FX_AT_640 = 519.0  # NYUD Kinect focal length in pixels at 640 px width
_GRID = 0.05  # metres per cell of the floor occupancy grid used for placement


def synth_names() -> list[str]:
    """The K=894 entries of the synthetic ``names`` cell: real names at the ids we draw."""
    names = [f"unused{k}" for k in range(1, NUM_NAMES + 1)]
    for cls, raw in RAW_IDS.items():
        names[raw - 1] = cls
    return names


def synth_map_class() -> np.ndarray:
    """``mapClass`` of the synthetic mapping: (894,) 1-based NYU40 ids; unused ids -> otherprop."""
    mapping = np.full(NUM_NAMES, len(NYUD40_CLASSES), dtype=np.int64)
    for cls, raw in RAW_IDS.items():
        mapping[raw - 1] = NYUD40_CLASSES.index(cls) + 1
    return mapping


@dataclass
class SynthFrame:
    """One rendered frame. rgb (H, W, 3) uint8; depth (H, W) float32 m; labels (H, W) uint16 raw
    ids (0 = void); instances (H, W) int16 object index (-1 for room surfaces and clutter);
    ``objects[i]`` is the class name of instance i."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    objects: list[str]


# ----------------------------------------------------------------------------- scene sampling


@dataclass
class _Object:
    cls: str | None  # None: unlabelled clutter
    color: np.ndarray  # (3,) base albedo
    color2: np.ndarray  # (3,) second albedo (legs, blanket, panels)
    params: dict = field(default_factory=dict)


@dataclass
class _Box:
    center: np.ndarray  # (3,) world x, y, z in metres (y up)
    half: np.ndarray  # (3,) half extents in the box frame
    yaw: float  # rotation about the world y axis, box frame -> world
    obj: int  # index into the scene's objects
    role: str = "body"


@dataclass
class _Scene:
    size: np.ndarray  # room extent (x, y, z); the room is [0, size]
    objects: list[_Object]
    boxes: list[_Box]
    surfaces: list[_Object]  # wall, floor, ceiling materials
    light: np.ndarray  # (3,) point light position


def _hsv(rng: np.random.Generator, sat: tuple, val: tuple) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*sat), rng.uniform(*val)))


# (saturation, value) ranges of the base colour: rooms are pale, furniture more colourful, as
# in real homes; the hue is always uniform so that colour does not tell the class.
_SAT_VAL = {
    "wall": ((0.05, 0.35), (0.6, 0.95)),
    "ceiling": ((0.0, 0.15), (0.8, 1.0)),
    "floor": ((0.1, 0.6), (0.3, 0.8)),
}


def _material(rng: np.random.Generator, cls: str | None, **params) -> _Object:
    """A material with a random hue: base colour and a darker second colour."""
    sat, val = _SAT_VAL.get(cls, ((0.2, 0.75), (0.35, 0.9)))
    return _Object(cls, _hsv(rng, sat, val), _hsv(rng, (0.1, 0.6), (0.2, 0.6)), params)


class _Placer:
    """Rejection sampling of non-overlapping box footprints on a floor occupancy grid."""

    def __init__(self, size: np.ndarray) -> None:
        self.size = size
        xs = np.arange(_GRID / 2, size[0], _GRID)
        zs = np.arange(_GRID / 2, size[2], _GRID)
        self.gx, self.gz = np.meshgrid(xs, zs)
        self.taken = np.zeros(self.gx.shape, dtype=bool)

    def footprint(self, cx: float, cz: float, hx: float, hz: float, yaw: float) -> np.ndarray:
        c, s = np.cos(yaw), np.sin(yaw)
        dx, dz = self.gx - cx, self.gz - cz
        lx, lz = c * dx - s * dz, s * dx + c * dz
        return (np.abs(lx) <= hx) & (np.abs(lz) <= hz)

    def fits(self, cx: float, cz: float, hx: float, hz: float, yaw: float) -> bool:
        r = np.hypot(hx, hz)
        corners = np.array([[hx, hz], [-hx, hz], [hx, -hz], [-hx, -hz]])
        c, s = np.cos(yaw), np.sin(yaw)
        wx = cx + c * corners[:, 0] + s * corners[:, 1]
        wz = cz - s * corners[:, 0] + c * corners[:, 1]
        inside = np.all((wx > 0.01) & (wx < self.size[0] - 0.01))
        inside &= np.all((wz > 0.01) & (wz < self.size[2] - 0.01))
        if not inside or r <= 0:
            return False
        return not np.any(self.taken & self.footprint(cx, cz, hx + 0.05, hz + 0.05, yaw))

    def take(self, cx: float, cz: float, hx: float, hz: float, yaw: float) -> None:
        self.taken |= self.footprint(cx, cz, hx, hz, yaw)


def _against_wall(rng, placer: _Placer, hx: float, hz: float, walls: Sequence[int], gap=0.02):
    """Centre and yaw of a footprint whose back (+z in the box frame) touches one of ``walls``
    (0: x=0, 1: x=X, 2: z=Z), or None."""
    X, _, Z = placer.size
    for _ in range(30):
        wall = walls[rng.integers(len(walls))]
        if wall == 2:
            yaw, cx, cz = 0.0, rng.uniform(hx, X - hx), Z - hz - gap
        elif wall == 1:
            yaw, cx, cz = np.pi / 2, X - hz - gap, rng.uniform(hx, Z - hx)
        else:
            yaw, cx, cz = -np.pi / 2, hz + gap, rng.uniform(hx, Z - hx)
        if placer.fits(cx, cz, hx, hz, yaw):
            return cx, cz, yaw
    return None


def _free_spot(rng, placer: _Placer, hx: float, hz: float, yaw: float | None = None, near=None):
    for _ in range(40):
        a = rng.uniform(-np.pi, np.pi) if yaw is None else yaw
        if near is None:
            cx, cz = rng.uniform(0, placer.size[0]), rng.uniform(0, placer.size[2])
        else:
            cx, cz = near[0] + rng.normal(0, near[2]), near[1] + rng.normal(0, near[2])
        if placer.fits(cx, cz, hx, hz, a):
            return cx, cz, a
    return None


class _SceneBuilder:
    """Furnishes a room with objects made of boxes. ``spot`` = (cx, cz, yaw) is an object's floor
    position and heading; its parts are given in the object frame (back = +z, front = -z)."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray, cam_pos: np.ndarray) -> None:
        self.rng, self.size = rng, size
        self.placer = _Placer(size)
        self.placer.take(cam_pos[0], cam_pos[2], 0.6, 0.6, 0.0)  # keep the camera outside
        self.objects: list[_Object] = []
        self.boxes: list[_Box] = []

    def new(self, cls: str | None, **params) -> int:
        self.objects.append(_material(self.rng, cls, **params))
        return len(self.objects) - 1

    def part(self, obj, spot, lx, y0, lz, hx, hy, hz, role="body") -> None:
        """A box with half extents (hx, hy, hz), bottom at y0, centred at (lx, lz)."""
        cx, cz, yaw = spot
        c, s = np.cos(yaw), np.sin(yaw)
        center = np.array([cx + c * lx + s * lz, y0 + hy, cz - s * lx + c * lz])
        self.boxes.append(_Box(center, np.array([hx, hy, hz]), yaw, obj, role))

    def legs(self, obj, spot, hx, hz, height, leg) -> None:
        for sx in (-1, 1):
            for sz in (-1, 1):
                self.part(
                    obj, spot, sx * (hx - leg), 0.0, sz * (hz - leg), leg, height / 2, leg, "leg"
                )

    def against_wall(self, hx: float, hz: float) -> tuple | None:
        spot = _against_wall(self.rng, self.placer, hx, hz, (0, 1, 2))
        if spot is not None:
            self.placer.take(spot[0], spot[1], hx, hz, spot[2])
        return spot

    def door(self) -> None:
        hx = self.rng.uniform(0.4, 0.5)
        spot = self.against_wall(hx, 0.45)  # the footprint is the swing area, kept free
        if spot is not None:
            obj = self.new("door", panels=int(self.rng.integers(1, 4)))
            # 3 cm proud of the wall; the rest is inside the wall, hidden
            self.part(obj, spot, 0, 0.0, 0.45, hx, self.rng.uniform(1.0, 1.05), 0.05)

    def bed(self) -> None:
        rng = self.rng
        hx, hz = rng.uniform(0.7, 1.0), rng.uniform(0.98, 1.1)
        spot = self.against_wall(hx, hz)
        if spot is not None:
            obj, h = self.new("bed"), rng.uniform(0.45, 0.6)
            self.part(obj, spot, 0, 0.0, -0.04, hx, h / 2, hz - 0.04, "mattress")
            self.part(obj, spot, 0, 0.0, hz - 0.04, hx, rng.uniform(0.45, 0.6), 0.04, "headboard")

    def sofa(self) -> None:
        rng = self.rng
        hx, hz = rng.uniform(0.8, 1.2), rng.uniform(0.4, 0.48)
        spot = self.against_wall(hx, hz)
        if spot is not None:
            obj = self.new("sofa")
            seat, arm, back = (
                rng.uniform(0.4, 0.48),
                rng.uniform(0.14, 0.2),
                rng.uniform(0.16, 0.22),
            )
            depth = hz - back / 2
            self.part(obj, spot, 0, 0.0, -back / 2, hx - arm, seat / 2, depth, "seat")
            self.part(obj, spot, 0, 0.0, depth, hx, rng.uniform(0.4, 0.45), back / 2)
            for sx in (-1, 1):
                self.part(obj, spot, sx * (hx - arm / 2), 0.0, -back / 2, arm / 2, 0.3, depth)

    def cabinet(self) -> None:
        rng = self.rng
        hx, hz = rng.uniform(0.35, 0.75), rng.uniform(0.22, 0.3)
        spot = self.against_wall(hx, hz)
        if spot is not None:
            obj = self.new("cabinet", rows=int(rng.integers(2, 5)))
            # low (sideboard) or tall (wardrobe)
            height = rng.uniform(0.7, 1.0) if rng.uniform() < 0.5 else rng.uniform(1.5, 2.1)
            self.part(obj, spot, 0, 0.0, 0, hx, height / 2, hz)

    def table(self) -> tuple | None:
        """Returns (cx, cz, yaw, hx, hz, height) of the table placed, or None."""
        rng = self.rng
        hx, hz = rng.uniform(0.45, 0.85), rng.uniform(0.35, 0.5)
        yaw = rng.integers(4) * np.pi / 2 + rng.uniform(-0.3, 0.3)
        spot = _free_spot(rng, self.placer, hx, hz, yaw)
        if spot is None:
            return None
        self.placer.take(spot[0], spot[1], hx, hz, yaw)
        obj = self.new("table")
        h, top = rng.uniform(0.7, 0.78), rng.uniform(0.04, 0.07)
        self.part(obj, spot, 0, h - top, 0, hx, top / 2, hz, "top")
        self.legs(obj, spot, hx, hz, h - top, rng.uniform(0.03, 0.05))
        return (*spot, hx, hz, h)

    def chair(self, table: tuple | None) -> None:
        rng = self.rng
        h = rng.uniform(0.22, 0.27)
        near = (table[0], table[1], 0.6) if table else None
        spot = _free_spot(rng, self.placer, h, h, 0.0, near)
        if spot is None:
            return
        cx, cz, _ = spot
        if table:  # face the table: the chair's front is -z in its frame
            yaw = np.arctan2(cx - table[0], cz - table[1]) + rng.normal(0, 0.2)
        else:
            yaw = rng.uniform(-np.pi, np.pi)
        if not self.placer.fits(cx, cz, h, h, yaw):
            return
        self.placer.take(cx, cz, h, h, yaw)
        obj = self.new("chair", slats=bool(rng.uniform() < 0.5))
        spot = (cx, cz, yaw)
        seat_h, seat_t = rng.uniform(0.42, 0.48), 0.05
        self.part(obj, spot, 0, seat_h - seat_t, 0, h, seat_t / 2, h, "seat")
        self.part(obj, spot, 0, seat_h, h - 0.025, h, rng.uniform(0.2, 0.26), 0.025, "back")
        self.legs(obj, spot, h, h, seat_h - seat_t, 0.025)

    def clutter(self, table: tuple | None) -> None:
        """A small unlabelled box on the table or on the floor."""
        rng = self.rng
        h = rng.uniform(0.08, 0.18)
        if table and rng.uniform() < 0.5:
            tx, tz, tyaw, thx, thz, top = table
            lx, lz = rng.uniform(-thx + 1.5 * h, thx - 1.5 * h), rng.uniform(-thz + h, thz - h)
            spot = (tx, tz, tyaw)
            self.part(self.new(None), spot, lx, top, lz, h, h, h)
            return
        spot = _free_spot(rng, self.placer, h, h)
        if spot is not None:
            self.placer.take(spot[0], spot[1], h, h, spot[2])
            self.part(self.new(None), spot, 0, 0.0, 0, h, h, h)


def _sample_scene(rng: np.random.Generator, cam_pos: np.ndarray, size: np.ndarray) -> _Scene:
    """A furnished room of extent ``size`` that leaves ``cam_pos`` free."""
    room = _SceneBuilder(rng, size, cam_pos)
    for place, prob in ((room.door, 0.8), (room.bed, 0.5), (room.sofa, 0.55)):
        if rng.uniform() < prob:
            place()
    for prob in (0.8, 0.4):
        if rng.uniform() < prob:
            room.cabinet()
    table = room.table() if rng.uniform() < 0.75 else None
    for _ in range(int(rng.integers(1, 5))):
        room.chair(table)
    for _ in range(int(rng.integers(0, 4))):
        room.clutter(table)
    wall = _material(rng, "wall", stripes=rng.uniform() < 0.3, period=rng.uniform(0.15, 0.4))
    floor = _material(rng, "floor", tiles=rng.uniform() < 0.4, width=rng.uniform(0.12, 0.25))
    ceiling = _material(rng, "ceiling", tiles=rng.uniform() < 0.5)
    light = np.array(
        [rng.uniform(0.3, 0.7) * size[0], size[1] - 0.15, rng.uniform(0.3, 0.8) * size[2]]
    )
    return _Scene(size, room.objects, room.boxes, [wall, floor, ceiling], light)


# ----------------------------------------------------------------------------- camera, ray casting


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _camera_position(rng: np.random.Generator, size: np.ndarray) -> np.ndarray:
    """A camera position (3,) near the z=0 wall, at a person's eye height."""
    return np.array([rng.uniform(0.8, size[0] - 0.8), rng.uniform(1.2, 1.7), rng.uniform(0.2, 0.6)])


def _camera_rotation(rng: np.random.Generator, pos: np.ndarray, scene: _Scene) -> np.ndarray:
    """Camera-to-world rotation (3, 3) (camera frame: x right, y down, z forward) that looks
    roughly at a random piece of furniture, or into the room if there is none."""
    targets = [b.center for b in scene.boxes if scene.objects[b.obj].cls]
    if targets and rng.uniform() < 0.65:
        to = targets[rng.integers(len(targets))] - pos
        yaw = np.arctan2(to[0], to[2]) + rng.normal(0, 0.15)
        pitch = np.arctan2(-to[1], np.hypot(to[0], to[2])) + rng.normal(0, 0.1)
    else:
        yaw, pitch = rng.uniform(-0.55, 0.55), rng.uniform(-0.1, 0.25)
    pitch = np.clip(pitch, -0.1, 0.6)
    roll = rng.normal(0, 0.03)
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    tilt = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive pitch looks down
    spin = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return _rot_y(yaw) @ tilt @ spin @ np.diag([1.0, -1.0, 1.0])


def _screen_window(box: _Box, pos, rot, fx, cx, cy, h, w):
    """Pixel rectangle (y0, y1, x0, x1) that holds the box's projection, or None if unseen."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners = box.center + (signs * box.half) @ _rot_y(box.yaw).T
    cam = (corners - pos) @ rot  # rows are camera-frame coordinates
    if np.all(cam[:, 2] <= 1e-3):
        return None
    if np.any(cam[:, 2] <= 1e-3):
        return 0, h, 0, w
    u = fx * cam[:, 0] / cam[:, 2] + cx
    v = fx * cam[:, 1] / cam[:, 2] + cy
    x0, x1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 1, w)
    y0, y1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 1, h)
    return (y0, y1, x0, x1) if x0 < x1 and y0 < y1 else None


def _to_box(box: _Box, points: np.ndarray, vectors: bool = False) -> np.ndarray:
    """World points (or directions) (..., 3) in the box frame."""
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    if not vectors:
        x, y, z = x - box.center[0], y - box.center[1], z - box.center[2]
    return np.stack([c * x - s * z, y, s * x + c * z], axis=-1)


def _slab(box: _Box, origin: np.ndarray, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
    """Ray-box entry and exit distances (h, w) for rays ``origin + t * (dx, dy, dz)``."""
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    o = _to_box(box, origin)
    near = np.full(dx.shape, -np.inf, dtype=np.float32)
    far = np.full(dx.shape, np.inf, dtype=np.float32)
    for d, oc, hc in zip((c * dx - s * dz, dy, s * dx + c * dz), o, box.half):
        inv = 1.0 / d
        ta, tb = (-hc - oc) * inv, (hc - oc) * inv
        near = np.maximum(near, np.minimum(ta, tb))
        far = np.minimum(far, np.maximum(ta, tb))
    return near, far


def _ray_cast(scene: _Scene, pos, rot, fx, h, w):
    """Per pixel: hit distance along the ray (= z-depth, since rays have unit camera z), the hit
    surface (-1..-6: room faces x0, x1, floor, ceiling, z0, z1; >= 0: box index) and the ray
    directions (H, W, 3)."""
    cx, cy = w / 2.0, h / 2.0
    u = (np.arange(w, dtype=np.float32) + 0.5 - cx) / fx
    v = (np.arange(h, dtype=np.float32) + 0.5 - cy) / fx
    cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.float32(1.0)), axis=-1)
    dirs = cam @ rot.T.astype(np.float32)  # (H, W, 3) world directions
    comps = [np.ascontiguousarray(dirs[..., i]) for i in range(3)]
    with np.errstate(divide="ignore", invalid="ignore"):
        # The room is the box [0, size]: exit distance and face per axis, nearest wins.
        t = np.full((h, w), np.inf, dtype=np.float32)
        surface = np.zeros((h, w), dtype=np.int16)
        for axis, d in enumerate(comps):
            positive = d > 0
            t_axis = np.where(positive, (scene.size[axis] - pos[axis]) / d, -pos[axis] / d)
            closer = (t_axis > 0) & (t_axis < t)  # rays parallel to a face give inf or nan
            t[closer] = t_axis[closer]
            surface[closer] = -1 - (2 * axis + positive[closer])
        for k, box in enumerate(scene.boxes):
            win = _screen_window(box, pos, rot, fx, cx, cy, h, w)
            if win is None:
                continue
            y0, y1, x0, x1 = win
            near, far = _slab(box, pos, *(d[y0:y1, x0:x1] for d in comps))
            sub_t = t[y0:y1, x0:x1]
            hit = (near <= far) & (near > 1e-4) & (near < sub_t)
            sub_t[hit] = near[hit]
            surface[y0:y1, x0:x1][hit] = k
    return t, surface, dirs


# ----------------------------------------------------------------------------- texture and shading


def _hash(i: np.ndarray, j: np.ndarray | float = 0.0, salt: float = 0.0) -> np.ndarray:
    """Cheap deterministic pseudo-random value in [0, 1) per integer cell."""
    x = np.sin(i * 127.1 + j * 311.7 + salt * 74.7) * 43758.5453
    return x - np.floor(x)


def _lines(u: np.ndarray, period: float, width: float) -> np.ndarray:
    """1 on thin lines every ``period`` metres, else 0."""
    return (np.mod(u, period) < width).astype(np.float32)


def _pattern(obj: _Object, role: str, u, v, face_axis, local, half, salt):
    """Brightness modulation (n,) and mix (n,) towards the object's second colour.

    ``u``, ``v`` are metres along the hit face; ``face_axis`` is 0, 1, 2 (x, y=top/bottom, z).
    """
    one = np.ones_like(u)
    zero = np.zeros_like(u)
    p = obj.params
    if obj.cls == "wall":
        m = 1 + 0.04 * np.sin(u * 1.7 + salt) * np.sin(v * 2.3 + salt)
        return m * (1 - 0.08 * (np.mod(u, p["period"]) < p["period"] / 2) * p["stripes"]), zero
    if obj.cls == "ceiling":
        return one - 0.3 * p["tiles"] * np.maximum(
            _lines(u, 0.6, 0.025), _lines(v, 0.6, 0.025)
        ), zero
    if obj.cls == "floor":
        if p["tiles"]:
            size = 2.5 * p["width"]
            checker = (np.floor(u / size) + np.floor(v / size)) % 2
            grout = np.maximum(_lines(u, size, 0.015), _lines(v, size, 0.015))
            return (0.85 + 0.25 * checker) * (1 - 0.5 * grout), zero
        plank = np.floor(u / p["width"])
        length = 1.2
        shift = _hash(plank, salt=salt) * length
        board = np.floor((v + shift) / length)
        seam = np.maximum(_lines(u, p["width"], 0.012), _lines(v + shift, length, 0.012))
        grain = 0.06 * np.sin(v * 60 + 8 * _hash(plank, board, salt))
        return (0.75 + 0.4 * _hash(plank, board, salt) + grain) * (1 - 0.5 * seam), zero
    if obj.cls == "door":
        front = face_axis == 2
        x, y = local[:, 0], local[:, 1] + half[1]  # y from the door's bottom
        hx, hy = half[0], 2 * half[1]
        margin = 0.1
        panel_h = (hy - 2 * margin) / p["panels"]
        inset = (np.abs(x) < hx - margin) & (y > margin) & (y < hy - margin)
        outline = inset & (np.mod(y - margin, panel_h) < 0.05)
        edge = inset & (np.abs(np.abs(x) - (hx - margin)) < 0.05)
        frame = (np.abs(x) > hx - 0.08) | (y > hy - 0.08)
        handle = (np.abs(x - 0.7 * hx) < 0.03) & (np.abs(y - 1.0) < 0.05)
        m = 1 - 0.35 * (outline | edge) - 0.5 * handle
        return np.where(front, m, 0.8), (front & frame).astype(np.float32)
    if obj.cls == "cabinet":
        front = (face_axis == 2) & (local[:, 2] < 0)
        y = local[:, 1] + half[1]
        row = 2 * half[1] / p["rows"]
        gaps = np.maximum(_lines(y, row, 0.02), _lines(local[:, 0] + half[0], half[0], 0.02))
        knob = (np.abs(np.mod(y, row) - row * 0.8) < 0.025) & (
            np.abs(np.abs(local[:, 0]) - 0.12) < 0.04
        )
        grain = 0.05 * np.sin(u * 40)
        return np.where(front, 1 - 0.45 * gaps + grain, 0.85 + grain), front * knob
    if obj.cls == "bed":
        if role == "headboard":
            return 0.9 + 0.08 * np.sin(u * 35), one
        quilt = np.abs(np.sin((u + v) * 9)) * np.abs(np.sin((u - v) * 9))
        blanket = (local[:, 2] < half[2] * 0.35).astype(np.float32)
        return 1 - 0.35 * quilt * (face_axis == 1), blanket
    if obj.cls == "table":
        if role == "leg":
            return 0.8 * one, one
        return 0.9 + 0.12 * np.sin(u * 45 + 3 * np.sin(v * 7 + salt)), zero
    if obj.cls == "chair":
        if role == "leg":
            return 0.6 * one, one
        slats = p["slats"] and role == "back"
        return one - 0.5 * slats * (np.mod(u, 0.09) < 0.03), zero
    if obj.cls == "sofa":
        cushion = 2 * half[0] / 3 if role == "seat" else 2 * half[0] / 2
        seams = _lines(local[:, 0] + half[0], max(cushion, 0.3), 0.04) * (face_axis != 0)
        fabric = 0.06 * _hash(np.floor(u / 0.05), np.floor(v / 0.05), salt)
        return (0.95 + fabric) * (1 - 0.45 * seams), zero
    return 0.9 + 0.2 * _hash(np.floor(u / 0.1), np.floor(v / 0.1), salt), zero


# Texture coordinates (u, v) on a face perpendicular to x, y, z: (z, y), (x, z), (x, y).
_UV_AXES = np.array([[2, 1], [0, 2], [0, 1]])


def _shade(scene: _Scene, pos, t, surface, dirs, rng) -> np.ndarray:
    """Linear RGB (H, W, 3) in [0, 1]: albedo x (ambient + Lambert from the ceiling light)."""
    h, w = t.shape
    flat_s, flat_t = surface.ravel(), t.ravel()
    points = pos.astype(np.float32) + flat_t[:, None] * dirs.reshape(-1, 3)
    albedo = np.empty((flat_s.size, 3), dtype=np.float32)
    normal = np.empty((flat_s.size, 3), dtype=np.float32)
    order = np.argsort(flat_s, kind="stable")
    ids, starts = np.unique(flat_s[order], return_index=True)
    for sid, idx in zip(ids, np.split(order, starts[1:])):
        x = points[idx]
        if sid < 0:  # room face: axis and side from the id, normal into the room
            face = -1 - int(sid)
            axis, side = face // 2, face % 2
            n = np.zeros(3)
            n[axis] = -1.0 if side else 1.0
            obj = scene.surfaces[1 + side if axis == 1 else 0]  # wall, floor, ceiling
            u, v = x[:, _UV_AXES[axis, 0]], x[:, _UV_AXES[axis, 1]]
            m, mix = _pattern(obj, "surface", u, v, axis, x, np.zeros(3), float(face))
            normal[idx] = n
        else:
            box = scene.boxes[sid]
            obj = scene.objects[box.obj]
            local = _to_box(box, x)
            face_axis = np.argmax(np.abs(local) / box.half, axis=1)
            n_local = np.zeros_like(local)
            n_local[np.arange(len(idx)), face_axis] = np.sign(local[np.arange(len(idx)), face_axis])
            normal[idx] = n_local @ _rot_y(box.yaw).T
            uv_axes = _UV_AXES[face_axis]
            u = np.take_along_axis(local, uv_axes[:, :1], 1)[:, 0]
            v = np.take_along_axis(local, uv_axes[:, 1:], 1)[:, 0]
            m, mix = _pattern(obj, box.role, u, v, face_axis, local, box.half, float(box.obj))
        mix = np.asarray(mix, dtype=np.float32)[:, None]
        color, color2 = obj.color.astype(np.float32), obj.color2.astype(np.float32)
        albedo[idx] = np.asarray(m, dtype=np.float32)[:, None] * (color + mix * (color2 - color))
    to_light = scene.light.astype(np.float32) - points
    dist2 = np.einsum("ij,ij->i", to_light, to_light)
    lambert = np.maximum(np.einsum("ij,ij->i", normal, to_light) / np.sqrt(dist2), 0)
    light = 0.3 + 0.08 * normal[:, 1] + 0.9 * lambert * 6.0 / (4.0 + dist2)
    rgb = albedo * light[:, None]
    rgb = rgb / max(np.percentile(rgb, 99), 0.5)
    rgb += 0.02 * rng.standard_normal(rgb.shape, dtype=np.float32)
    return rgb.reshape(h, w, 3)


def render_frame(seed: int, index: int, size: tuple[int, int] = (240, 320)) -> SynthFrame:
    """Render frame ``index`` (0-based) of the synthetic set for ``seed`` at ``size`` = (H, W)."""
    h, w = size
    rng = np.random.default_rng([seed, index])
    room = np.array([rng.uniform(3.2, 5.0), rng.uniform(2.5, 2.9), rng.uniform(3.2, 5.0)])
    pos = _camera_position(rng, room)
    scene = _sample_scene(rng, pos, room)
    rot = _camera_rotation(rng, pos, scene)
    fx = FX_AT_640 * w / 640.0
    t, surface, dirs = _ray_cast(scene, pos, rot, fx, h, w)
    rgb = _shade(scene, pos, t, surface, dirs, rng)
    depth = (np.round(t * 1000.0) / 1000.0).astype(np.float32)
    # surface -1..-6 are the room faces x0, x1, floor, ceiling, z0, z1; a sentinel box ends the list
    face_raw = np.array([RAW_IDS[c] for c in ("wall", "wall", "floor", "ceiling", "wall", "wall")])
    box_raw = [RAW_IDS.get(scene.objects[b.obj].cls, VOID_ID) for b in scene.boxes]
    box_obj = [b.obj if scene.objects[b.obj].cls else -1 for b in scene.boxes]
    is_room = surface < 0
    box_idx = np.where(is_room, len(scene.boxes), surface)
    labels = np.where(
        is_room, face_raw[np.clip(-1 - surface, 0, 5)], np.array([*box_raw, 0])[box_idx]
    )
    instances = np.where(is_room, -1, np.array([*box_obj, -1])[box_idx])
    rgb8 = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)
    objects = [o.cls or "" for o in scene.objects]
    return SynthFrame(rgb8, depth, labels.astype(np.uint16), instances.astype(np.int16), objects)


# ----------------------------------------------------------------------------- dataset files


@dataclass
class SynthPaths:
    """Files written by :func:`generate_synth_nyud`."""

    labeled: Path
    splits: Path
    mapping: Path
    mapping13: Path
    crops: Path


def split_indices(frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """1-based (train, test) frame numbers, ~55 % / 45 % like the official split."""
    if frames < 2:
        raise ValueError(f"need at least 2 frames for a train and a test split, got {frames}")
    n_train = min(max(round(frames * TRAIN_FRACTION), 1), frames - 1)
    order = np.random.default_rng([seed, 2**32 - 1]).permutation(frames) + 1
    return np.sort(order[:n_train]), np.sort(order[n_train:])


def object_crops(
    frame: SynthFrame, rng: np.random.Generator, crop_size: int = 64, min_fraction: float = 0.01
) -> list[tuple[str, np.ndarray]]:
    """(class name, RGB crop (crop_size, crop_size, 3) uint8) of the frame's objects and surfaces.

    Objects: a square around each instance that covers at least ``min_fraction`` of the frame.
    Wall, floor, ceiling: one square patch each (a quarter of the frame height) that is >= 60 %
    of that class.
    """
    h, w = frame.labels.shape
    crops = []
    for inst, cls in enumerate(frame.objects):
        ys, xs = np.nonzero(frame.instances == inst)
        if not cls or ys.size < min_fraction * h * w:
            continue
        side = min(int(1.15 * max(np.ptp(ys), np.ptp(xs))) + 1, h, w)
        cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
        y0, x0 = np.clip(cy - side // 2, 0, h - side), np.clip(cx - side // 2, 0, w - side)
        crops.append((cls, frame.rgb[y0 : y0 + side, x0 : x0 + side]))
    side = h // 4
    for cls in ("wall", "floor", "ceiling"):
        ys, xs = np.nonzero(frame.labels == RAW_IDS[cls])
        for _ in range(20 if ys.size else 0):
            k = rng.integers(ys.size)
            y0, x0 = (
                np.clip(ys[k] - side // 2, 0, h - side),
                np.clip(xs[k] - side // 2, 0, w - side),
            )
            patch = frame.labels[y0 : y0 + side, x0 : x0 + side]
            if np.mean(patch == RAW_IDS[cls]) >= 0.6:
                crops.append((cls, frame.rgb[y0 : y0 + side, x0 : x0 + side]))
                break
    size = (crop_size, crop_size)
    return [(cls, cv2.resize(img, size, interpolation=cv2.INTER_AREA)) for cls, img in crops]


def generate_synth_nyud(
    out: str | Path,
    frames: int,
    seed: int = 0,
    size: tuple[int, int] = (240, 320),
    crop_size: int = 64,
    progress: bool = True,
) -> SynthPaths:
    """Render ``frames`` frames at ``size`` = (H, W) and write them in the official NYUD formats,
    plus object crops (see the module docstring). Returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = SynthPaths(
        out / "nyu_depth_v2_labeled.mat",
        out / "splits.mat",
        out / "classMapping40.mat",
        out / "class13Mapping.mat",
        out / "crops",
    )
    train, test = split_indices(frames, seed)
    write_splits_mat(paths.splits, train, test)
    write_class_mapping_mat(paths.mapping, synth_map_class(), NYUD40_CLASSES)
    write_class13_mapping_mat(paths.mapping13, NYUD13_FROM_40, NYUD13_CLASSES)
    crop_split = dict.fromkeys(train.tolist(), "train") | dict.fromkeys(test.tolist(), "val")
    for split in ("train", "val"):
        for cls in RAW_IDS:
            (paths.crops / split / cls).mkdir(parents=True, exist_ok=True)
    with LabeledMatWriter(paths.labeled, frames, *size, synth_names()) as writer:
        for i in tqdm(range(frames), desc="synth", unit="frame", disable=not progress):
            frame = render_frame(seed, i, size)
            writer.write(i, frame.rgb, frame.depth, frame.labels)
            rng = np.random.default_rng([seed, i, 1])
            for k, (cls, crop) in enumerate(object_crops(frame, rng, crop_size)):
                folder = paths.crops / crop_split[i + 1] / cls
                cv2.imwrite(str(folder / f"{i + 1:04d}_{k}.png"), crop[..., ::-1])
    return paths


# ----------------------------------------------------------------------------- preview


def label_colors(labels40: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 picture of 0-based NYU40 class ids: the generator's classes in tab10
    colours, other classes white, void (255) black."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(NYUD40_CLASSES)] = 255
    cmap = matplotlib.colormaps["tab10"]
    for k, cls in enumerate(RAW_IDS):
        palette[NYUD40_CLASSES.index(cls)] = np.array(cmap(k)[:3]) * 255
    return palette[labels40]


def preview_image(frames: Sequence[SynthFrame], width: int = 200) -> np.ndarray:
    """RGB picture with one row per frame: rgb | NYU40 labels | depth (viridis, 0..6 m)."""
    lut = np.concatenate([[255], synth_map_class() - 1]).astype(np.uint8)
    rows = []
    for f in frames:
        h = round(f.rgb.shape[0] * width / f.rgb.shape[1])
        depth = cv2.applyColorMap(
            np.clip(f.depth / 6.0 * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS
        )[..., ::-1]
        panels = [
            cv2.resize(f.rgb, (width, h), interpolation=cv2.INTER_AREA),
            cv2.resize(label_colors(lut[f.labels]), (width, h), interpolation=cv2.INTER_NEAREST),
            cv2.resize(depth, (width, h), interpolation=cv2.INTER_NEAREST),
        ]
        rows.append(np.concatenate(panels, axis=1))
    return np.concatenate(rows, axis=0)


def save_preview(
    path: str | Path, seed: int = 0, frames: int = 4, size=(240, 320), width: int = 200
) -> Path:
    """Render ``frames`` frames and save :func:`preview_image` of them as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = preview_image([render_frame(seed, i, size) for i in range(frames)], width)
    cv2.imwrite(str(path), image[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return path
