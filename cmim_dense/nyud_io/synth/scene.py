"""Procedural indoor scenes: room, furniture and clutter as boxes, and the camera pose.

A frame is a random room (floor, four walls, ceiling) with furniture built from boxes (bed,
table, chairs, sofa, cabinets, a door) and a few small unlabelled clutter boxes. The classes
keep their raw label ids of the real NYUD ``names`` list (K = 894), so the written files read
exactly like the official release. :mod:`~cmim_dense.nyud_io.synth.render` ray-casts a scene.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cmim_dense.nyud_io.classes import NYUD40_CLASSES

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
# ----------------------------------------------------------------------------- scene sampling


@dataclass
class SceneObject:
    cls: str | None  # None: unlabelled clutter
    color: np.ndarray  # (3,) base albedo
    color2: np.ndarray  # (3,) second albedo (legs, blanket, panels)
    params: dict = field(default_factory=dict)


@dataclass
class Box:
    center: np.ndarray  # (3,) world x, y, z in metres (y up)
    half: np.ndarray  # (3,) half extents in the box frame
    yaw: float  # rotation about the world y axis, box frame -> world
    obj: int  # index into the scene's objects
    role: str = "body"


@dataclass
class Scene:
    size: np.ndarray  # room extent (x, y, z); the room is [0, size]
    objects: list[SceneObject]
    boxes: list[Box]
    surfaces: list[SceneObject]  # wall, floor, ceiling materials
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


def _material(rng: np.random.Generator, cls: str | None, **params) -> SceneObject:
    """A material with a random hue: base colour and a darker second colour."""
    sat, val = _SAT_VAL.get(cls, ((0.2, 0.75), (0.35, 0.9)))
    return SceneObject(cls, _hsv(rng, sat, val), _hsv(rng, (0.1, 0.6), (0.2, 0.6)), params)


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
        self.objects: list[SceneObject] = []
        self.boxes: list[Box] = []

    def new(self, cls: str | None, **params) -> int:
        self.objects.append(_material(self.rng, cls, **params))
        return len(self.objects) - 1

    def part(self, obj, spot, lx, y0, lz, hx, hy, hz, role="body") -> None:
        """A box with half extents (hx, hy, hz), bottom at y0, centred at (lx, lz)."""
        cx, cz, yaw = spot
        c, s = np.cos(yaw), np.sin(yaw)
        center = np.array([cx + c * lx + s * lz, y0 + hy, cz - s * lx + c * lz])
        self.boxes.append(Box(center, np.array([hx, hy, hz]), yaw, obj, role))

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


def sample_scene(rng: np.random.Generator, cam_pos: np.ndarray, size: np.ndarray) -> Scene:
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
    return Scene(size, room.objects, room.boxes, [wall, floor, ceiling], light)


# ----------------------------------------------------------------------------- camera, ray casting


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def camera_position(rng: np.random.Generator, size: np.ndarray) -> np.ndarray:
    """A camera position (3,) near the z=0 wall, at a person's eye height."""
    return np.array([rng.uniform(0.8, size[0] - 0.8), rng.uniform(1.2, 1.7), rng.uniform(0.2, 0.6)])


def camera_rotation(rng: np.random.Generator, pos: np.ndarray, scene: Scene) -> np.ndarray:
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
    return rot_y(yaw) @ tilt @ spin @ np.diag([1.0, -1.0, 1.0])
