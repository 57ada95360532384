"""Ray casting and shading of a synthetic scene into RGB, z-depth and NYUD raw labels.

Each box is hit-tested with one vectorised slab test over the pixels of its screen window; the
pinhole camera has NYUD-like intrinsics. Depth is exact z-depth in metres (stored to 1 mm, the
Kinect's and the converted PNG's unit). RGB has Lambertian shading from a ceiling light, a
class-specific texture pattern on each object, a random hue per object and pixel noise, so a
class is told apart by geometry, position and texture, not by colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmim_dense.nyud_io.synth.scene import (
    RAW_IDS,
    VOID_ID,
    Box,
    Scene,
    SceneObject,
    camera_position,
    camera_rotation,
    rot_y,
    sample_scene,
)

FX_AT_640 = 519.0  # NYUD Kinect focal length in pixels at 640 px width


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


def _screen_window(box: Box, pos, rot, fx, cx, cy, h, w):
    """Pixel rectangle (y0, y1, x0, x1) that holds the box's projection, or None if unseen."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners = box.center + (signs * box.half) @ rot_y(box.yaw).T
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


def _to_box(box: Box, points: np.ndarray, vectors: bool = False) -> np.ndarray:
    """World points (or directions) (..., 3) in the box frame."""
    c, s = np.cos(box.yaw), np.sin(box.yaw)
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    if not vectors:
        x, y, z = x - box.center[0], y - box.center[1], z - box.center[2]
    return np.stack([c * x - s * z, y, s * x + c * z], axis=-1)


def _slab(box: Box, origin: np.ndarray, dx, dy, dz) -> tuple[np.ndarray, np.ndarray]:
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


def ray_cast(
    scene: Scene, pos: np.ndarray, rot: np.ndarray, fx: float, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def _room_pattern(obj: SceneObject, u, v, salt) -> np.ndarray:
    """Brightness modulation (n,) of a wall, ceiling or floor at face coordinates u, v (m)."""
    p = obj.params
    if obj.cls == "wall":
        m = 1 + 0.04 * np.sin(u * 1.7 + salt) * np.sin(v * 2.3 + salt)
        return m * (1 - 0.08 * (np.mod(u, p["period"]) < p["period"] / 2) * p["stripes"])
    if obj.cls == "ceiling":
        return np.ones_like(u) - 0.3 * p["tiles"] * np.maximum(
            _lines(u, 0.6, 0.025), _lines(v, 0.6, 0.025)
        )
    if p["tiles"]:
        size = 2.5 * p["width"]
        checker = (np.floor(u / size) + np.floor(v / size)) % 2
        grout = np.maximum(_lines(u, size, 0.015), _lines(v, size, 0.015))
        return (0.85 + 0.25 * checker) * (1 - 0.5 * grout)
    plank = np.floor(u / p["width"])
    length = 1.2
    shift = _hash(plank, salt=salt) * length
    board = np.floor((v + shift) / length)
    seam = np.maximum(_lines(u, p["width"], 0.012), _lines(v + shift, length, 0.012))
    grain = 0.06 * np.sin(v * 60 + 8 * _hash(plank, board, salt))
    return (0.75 + 0.4 * _hash(plank, board, salt) + grain) * (1 - 0.5 * seam)


def _door_pattern(p: dict, face_axis, local, half) -> tuple[np.ndarray, np.ndarray]:
    """Brightness (n,) and mix (n,) of a door: panels, frame and handle on its front, from its
    box-frame hit points ``local`` (n, 3) and half extents ``half`` (3,), in metres."""
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


def _cabinet_pattern(p: dict, u, face_axis, local, half) -> tuple[np.ndarray, np.ndarray]:
    """Brightness (n,) and mix (n,) of a cabinet: drawer gaps and knobs on its front, wood grain
    along ``u`` (m); ``local`` (n, 3) and ``half`` (3,) as for :func:`_door_pattern`."""
    front = (face_axis == 2) & (local[:, 2] < 0)
    y = local[:, 1] + half[1]
    row = 2 * half[1] / p["rows"]
    gaps = np.maximum(_lines(y, row, 0.02), _lines(local[:, 0] + half[0], half[0], 0.02))
    knob = (np.abs(np.mod(y, row) - row * 0.8) < 0.025) & (
        np.abs(np.abs(local[:, 0]) - 0.12) < 0.04
    )
    grain = 0.05 * np.sin(u * 40)
    return np.where(front, 1 - 0.45 * gaps + grain, 0.85 + grain), front * knob


def _pattern(obj: SceneObject, role: str, u, v, face_axis, local, half, salt):
    """Brightness modulation (n,) and mix (n,) towards the object's second colour.

    ``u``, ``v`` are metres along the hit face; ``face_axis`` is 0, 1, 2 (x, y=top/bottom, z).
    """
    one = np.ones_like(u)
    zero = np.zeros_like(u)
    p = obj.params
    if obj.cls in ("wall", "ceiling", "floor"):
        return _room_pattern(obj, u, v, salt), zero
    if obj.cls == "door":
        return _door_pattern(p, face_axis, local, half)
    if obj.cls == "cabinet":
        return _cabinet_pattern(p, u, face_axis, local, half)
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


def _shade(scene: Scene, pos, t, surface, dirs, rng) -> np.ndarray:
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
            normal[idx] = n_local @ rot_y(box.yaw).T
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
    pos = camera_position(rng, room)
    scene = sample_scene(rng, pos, room)
    rot = camera_rotation(rng, pos, scene)
    fx = FX_AT_640 * w / 640.0
    t, surface, dirs = ray_cast(scene, pos, rot, fx, h, w)
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
