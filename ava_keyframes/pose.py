"""Articulated stick-and-blob figures whose pose alone shows an AVA movement action.

A figure is a skeleton (hips, torso, neck, head, two arms and two legs of two segments each)
given by joint angles per action (``pose_angles``); walking, running, dancing, swimming and
crawling move with a phase. Its look (clothing colours, skin tone, limb lengths and
thickness) belongs to the person (``Look``), drawn at random and independent of the action.
``draw_figure`` scales the skeleton so the drawn pixels fill a given box: the figure's
extent is the annotated box, whatever its aspect ratio.

Co-occurring labels: a person with two movement actions shows the first action's legs and
body and the second action's arms; any other action id (the 66 non-movement AVA classes)
adds an arm gesture of its own (a raised arm at an angle set by the id) to the pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

MOVEMENT = tuple(range(1, 15))
"""AVA's 14 movement classes: 1 bend/bow .. 14 walk (the real val subset's classes)."""
(BEND, CRAWL, CROUCH, DANCE, FALL, GET_UP, JUMP, LIE, MARTIAL, RUN, SIT, STAND, SWIM,
 WALK) = MOVEMENT

Angles = dict[str, float]
"""Degrees. ``tilt``: whole body from upright (90 = lying); ``torso``: lean forward from the
hips; limbs ``thigh_l .. fore_r``: segment direction from straight down, positive forward."""

_STRAIGHT: Angles = {"tilt": 0, "torso": 0, "thigh_l": 0, "shin_l": 0, "thigh_r": 0,
                     "shin_r": 0, "upper_l": 5, "fore_l": 5, "upper_r": -5, "fore_r": -5}


def _swing(phase: float, amplitude: float) -> float:
    return amplitude * math.sin(phase)


def pose_angles(action: int, phase: float) -> Angles:
    """Joint angles of ``action`` at ``phase`` (radians; only moving actions use it)."""
    s = _swing
    a = dict(_STRAIGHT)
    if action == WALK:
        a.update(thigh_l=s(phase, 28), thigh_r=-s(phase, 28), shin_l=s(phase, 28) - 12,
                 shin_r=-s(phase, 28) - 12, upper_l=-s(phase, 25), upper_r=s(phase, 25),
                 fore_l=-s(phase, 25) + 15, fore_r=s(phase, 25) + 15)
    elif action == RUN:
        a.update(torso=15, thigh_l=s(phase, 50) + 15, thigh_r=-s(phase, 50) + 15,
                 shin_l=s(phase, 40) - 60, shin_r=-s(phase, 40) - 60,
                 upper_l=-s(phase, 45), upper_r=s(phase, 45), fore_l=90, fore_r=90)
    elif action == SIT:
        a.update(thigh_l=90, thigh_r=85, upper_l=20, upper_r=15, fore_l=70, fore_r=65)
    elif action == BEND:
        a.update(torso=85, upper_l=-5, upper_r=5, fore_l=-10, fore_r=10)
    elif action == CROUCH:
        a.update(torso=20, thigh_l=120, shin_l=-10, thigh_r=110, shin_r=-20,
                 upper_l=40, fore_l=80, upper_r=35, fore_r=75)
    elif action == LIE:
        a.update(tilt=90, upper_l=10, upper_r=-10, fore_l=15, fore_r=-15)
    elif action == JUMP:
        a.update(thigh_l=70, shin_l=-40, thigh_r=60, shin_r=-50,
                 upper_l=160, fore_l=170, upper_r=-160, fore_r=-170)
    elif action == FALL:
        a.update(tilt=55, torso=-20, thigh_l=30, thigh_r=-10, upper_l=120, fore_l=140,
                 upper_r=-110, fore_r=-130)
    elif action == GET_UP:
        a.update(torso=30, thigh_l=95, shin_l=0, thigh_r=10, shin_r=-95,
                 upper_l=60, fore_l=20, upper_r=70, fore_r=30)
    elif action == DANCE:
        a.update(thigh_l=s(phase, 20), thigh_r=35 + s(phase, 15), shin_r=-30,
                 upper_l=150 + s(phase, 20), fore_l=170, upper_r=-100 - s(phase, 30),
                 fore_r=-150)
    elif action == MARTIAL:
        a.update(torso=-15, thigh_l=-10, thigh_r=95, shin_r=90, upper_l=90, fore_l=90,
                 upper_r=-45, fore_r=-120)
    elif action == CRAWL:
        a.update(tilt=90, thigh_l=-90 + s(phase, 15), thigh_r=-90 - s(phase, 15),
                 shin_l=180, shin_r=180, upper_l=-90 - s(phase, 15), fore_l=-90,
                 upper_r=-90 + s(phase, 15), fore_r=-90)
    elif action == SWIM:
        a.update(tilt=90, thigh_l=s(phase, 12), thigh_r=-s(phase, 12), shin_l=s(phase, 12),
                 shin_r=-s(phase, 12), upper_l=180 + s(phase, 60), fore_l=180 + s(phase, 60),
                 upper_r=180 - s(phase, 60), fore_r=180 - s(phase, 60))
    return a


def person_angles(actions: tuple[int, ...], phase: float) -> Angles:
    """Angles for a person with all of ``actions`` (see the module docstring)."""
    moves = [a for a in actions if a in MOVEMENT] or [STAND]
    angles = pose_angles(moves[0], phase)
    if len(moves) > 1:
        second = pose_angles(moves[1], phase)
        angles.update({k: second[k] for k in ("upper_l", "fore_l", "upper_r", "fore_r")})
    for other in (a for a in actions if a not in MOVEMENT):
        angles.update(upper_r=-(60 + other * 37 % 120), fore_r=-(80 + other * 53 % 100))
    return angles


@dataclass(frozen=True)
class Look:
    """A person's appearance: colours and proportions, fixed for the whole video."""

    shirt: tuple[int, int, int]
    trousers: tuple[int, int, int]
    skin: tuple[int, int, int]
    torso: float
    thigh: float
    shin: float
    upper: float
    fore: float
    head: float
    shoulders: float
    thickness: float
    """Limb half-width as a fraction of the box's longer side."""

    @classmethod
    def random(cls, rng: np.random.Generator) -> Look:
        tone = rng.uniform(0.25, 1.0)
        skin = tuple(int(c) for c in np.array([235, 190, 160]) * tone)
        shirt, trousers = (tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(2))
        return cls(shirt, trousers, skin, torso=rng.uniform(0.28, 0.36),
                   thigh=rng.uniform(0.2, 0.26), shin=rng.uniform(0.2, 0.26),
                   upper=rng.uniform(0.14, 0.18), fore=rng.uniform(0.13, 0.17),
                   head=rng.uniform(0.06, 0.08), shoulders=rng.uniform(0.07, 0.1),
                   thickness=rng.uniform(0.025, 0.04))


def _direction(degrees: float, tilt: float) -> np.ndarray:
    """Unit vector pointing down, turned forward (to +x) by ``degrees`` plus ``tilt``."""
    r = math.radians(degrees + tilt)
    return np.array([math.sin(r), math.cos(r)])


def skeleton(look: Look, angles: Angles) -> tuple[list[tuple[str, np.ndarray, np.ndarray]],
                                                  np.ndarray]:
    """Segments (part, start, end) in body units (y down) and the head's centre."""
    tilt = angles["tilt"]
    hips = np.zeros(2)
    up = -_direction(angles["torso"], tilt)
    neck = hips + look.torso * up
    across = np.array([-up[1], up[0]]) * look.shoulders
    head = neck + up * (look.head * 1.3)
    segments = [("torso", hips, neck)]
    for side, sign in (("l", 1), ("r", -1)):
        hip = hips + across * 0.6 * sign
        knee = hip + look.thigh * _direction(angles[f"thigh_{side}"], tilt)
        foot = knee + look.shin * _direction(angles[f"shin_{side}"], tilt)
        shoulder = neck + across * sign
        elbow = shoulder + look.upper * _direction(angles[f"upper_{side}"] + angles["torso"], tilt)
        hand = elbow + look.fore * _direction(angles[f"fore_{side}"] + angles["torso"], tilt)
        segments += [("thigh", hip, knee), ("shin", knee, foot), ("upper", shoulder, elbow),
                     ("fore", elbow, hand)]
    segments.insert(1, ("shoulders", neck - across, neck + across))
    return segments, head


def _fit(values: np.ndarray, radii: np.ndarray, length: int) -> tuple[float, float]:
    """Offset and scale mapping ``values`` so that ``values ± radii`` span [0, length - 1]."""
    scale = max(length - 1 - 2 * radii.max(), 1) / max(np.ptp(values), 1e-6)
    for _ in range(3):  # the extreme points may change with the scale; converges fast
        low, high = np.argmin(values * scale - radii), np.argmax(values * scale + radii)
        span = values[high] - values[low]
        if span <= 1e-6:
            break
        scale = max((length - 1 - radii[high] - radii[low]) / span, 1e-3)
    offset = -(values * scale - radii).min()
    return offset, scale


def draw_figure(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], look: Look,
                angles: Angles) -> None:
    """Draw the figure so its pixels fill ``box`` (x1, y1, x2, y2; x2, y2 exclusive)."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    if width < 1 or height < 1:
        return
    segments, head = skeleton(look, angles)
    half = max(0.5, look.thickness * max(width, height))
    head_r = max(1.0, min(look.head / look.torso * 0.35 * max(width, height),
                          width / 2 - 0.5, height / 2 - 0.5))
    half = min(half, head_r, max(0.5, min(width, height) / 4))
    points = np.array([p for _, a, b in segments for p in (a, b)] + [head])
    radii = np.array([half] * (len(points) - 1) + [head_r])
    ox, sx = _fit(points[:, 0], radii, width)
    oy, sy = _fit(points[:, 1], radii, height)

    def px(p: np.ndarray) -> tuple[float, float]:
        return (x1 + ox + p[0] * sx, y1 + oy + p[1] * sy)

    colour = {"thigh": look.trousers, "shin": look.trousers, "torso": look.shirt,
              "shoulders": look.shirt, "upper": look.shirt, "fore": look.skin}
    line_width = max(1, round(2 * half))
    for part, a, b in segments:
        start, end = px(a), px(b)
        draw.line([start, end], fill=colour[part], width=line_width)
        for point in (start, end):  # round joints, also where a segment has no length
            draw.ellipse([point[0] - half, point[1] - half, point[0] + half, point[1] + half],
                         fill=colour[part])
    cx, cy = px(head)
    draw.ellipse([cx - head_r, cy - head_r, cx + head_r, cy + head_r], fill=look.skin)
