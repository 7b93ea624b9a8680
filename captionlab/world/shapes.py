"""Procedural drawings of every object kind, each recognisable by its silhouette.

Each drawer paints one object into a bounding box with PIL's ImageDraw. Coordinates inside
the box are given as fractions (u, v) of its width and height, so one drawing serves both
sizes and the supersampled canvas alike. The object's colour paints its main body; fixed
details (wheels, trunks, sails, flames) keep their natural colours so the kind stays readable
whatever the colour.
"""

from __future__ import annotations

from typing import Callable

from PIL import ImageDraw

RGB = tuple[int, int, int]
Box = tuple[float, float, float, float]

OUTLINE: RGB = (22, 22, 26)
BROWN: RGB = (120, 78, 40)
DARK_GREY: RGB = (70, 70, 76)
GLASS: RGB = (170, 215, 240)
STEM_GREEN: RGB = (40, 130, 50)


def shade(colour: RGB, factor: float) -> RGB:
    """Darken (factor < 1) or lighten (factor > 1, towards white) a colour."""
    if factor <= 1:
        return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]
    return tuple(int(c + (255 - c) * (factor - 1)) for c in colour)  # type: ignore[return-value]


class _Frame:
    """Maps fractional coordinates of a bounding box to canvas pixels."""

    def __init__(self, box: Box):
        self.x0, self.y0, x1, y1 = box
        self.w, self.h = x1 - self.x0, y1 - self.y0
        self.line = max(2, int(round(min(self.w, self.h) / 22)))

    def p(self, u: float, v: float) -> tuple[float, float]:
        return (self.x0 + u * self.w, self.y0 + v * self.h)

    def r(self, u0: float, v0: float, u1: float, v1: float) -> list[float]:
        return [self.x0 + u0 * self.w, self.y0 + v0 * self.h, self.x0 + u1 * self.w, self.y0 + v1 * self.h]


def _outline_for(colour: RGB) -> RGB:
    # A black object would vanish into a black outline; give it a grey rim instead.
    return (120, 120, 128) if sum(colour) < 150 else OUTLINE


def draw_ball(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.ellipse(f.r(0.05, 0.05, 0.95, 0.95), fill=c, outline=o, width=f.line)
    d.arc(f.r(-0.3, 0.2, 0.7, 1.2), 270, 360, fill=o, width=f.line)
    d.ellipse(f.r(0.25, 0.2, 0.42, 0.37), fill=shade(c, 1.6))


def draw_box(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.polygon([f.p(0, 0.3), f.p(0.25, 0.05), f.p(1, 0.05), f.p(0.75, 0.3)], fill=shade(c, 1.35), outline=o, width=f.line)
    d.polygon([f.p(0.75, 0.3), f.p(1, 0.05), f.p(1, 0.75), f.p(0.75, 1)], fill=shade(c, 0.7), outline=o, width=f.line)
    d.rectangle(f.r(0, 0.3, 0.75, 1), fill=c, outline=o, width=f.line)


def draw_tree(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.rectangle(f.r(0.42, 0.55, 0.58, 1), fill=BROWN, outline=OUTLINE, width=f.line)
    d.ellipse(f.r(0.05, 0.0, 0.95, 0.68), fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.25, 0.12, 0.5, 0.35), fill=shade(c, 1.25))


def draw_house(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.rectangle(f.r(0.1, 0.45, 0.9, 1), fill=c, outline=o, width=f.line)
    d.polygon([f.p(0, 0.47), f.p(0.5, 0.05), f.p(1, 0.47)], fill=shade(c, 0.6), outline=o, width=f.line)
    d.rectangle(f.r(0.42, 0.68, 0.6, 1), fill=BROWN, outline=OUTLINE, width=f.line)
    d.rectangle(f.r(0.17, 0.56, 0.34, 0.73), fill=GLASS, outline=OUTLINE, width=f.line)
    d.rectangle(f.r(0.68, 0.56, 0.84, 0.73), fill=GLASS, outline=OUTLINE, width=f.line)


def draw_car(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.polygon([f.p(0.2, 0.47), f.p(0.32, 0.18), f.p(0.7, 0.18), f.p(0.82, 0.47)], fill=c, outline=o, width=f.line)
    d.polygon([f.p(0.3, 0.45), f.p(0.37, 0.25), f.p(0.65, 0.25), f.p(0.72, 0.45)], fill=GLASS)
    d.rounded_rectangle(f.r(0, 0.45, 1, 0.8), radius=f.h * 0.08, fill=c, outline=o, width=f.line)
    for u in (0.1, 0.64):
        d.ellipse(f.r(u, 0.62, u + 0.26, 0.98), fill=(25, 25, 25), outline=(25, 25, 25))
        d.ellipse(f.r(u + 0.08, 0.72, u + 0.18, 0.88), fill=(170, 170, 170))


def draw_cup(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.ellipse(f.r(0.58, 0.3, 0.95, 0.72), outline=o, width=max(3, f.line * 2))
    d.polygon([f.p(0.12, 0.15), f.p(0.78, 0.15), f.p(0.7, 0.95), f.p(0.2, 0.95)], fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.12, 0.08, 0.78, 0.24), fill=shade(c, 0.55), outline=o, width=f.line)


def draw_kite(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.line([f.p(0.5, 0.72), f.p(0.38, 0.82), f.p(0.6, 0.9), f.p(0.45, 1.0)], fill=o, width=f.line)
    for u, v in ((0.42, 0.81), (0.56, 0.89)):
        d.polygon([f.p(u - 0.05, v - 0.04), f.p(u + 0.05, v + 0.04), f.p(u + 0.05, v - 0.04), f.p(u - 0.05, v + 0.04)], fill=shade(c, 0.7))
    d.polygon([f.p(0.5, 0), f.p(0.88, 0.33), f.p(0.5, 0.74), f.p(0.12, 0.33)], fill=c, outline=o, width=f.line)
    d.line([f.p(0.5, 0), f.p(0.5, 0.74)], fill=o, width=max(1, f.line - 1))
    d.line([f.p(0.12, 0.33), f.p(0.88, 0.33)], fill=o, width=max(1, f.line - 1))


def draw_fish(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.polygon([f.p(0.66, 0.5), f.p(1, 0.2), f.p(1, 0.8)], fill=shade(c, 0.75), outline=o, width=f.line)
    d.ellipse(f.r(0, 0.22, 0.76, 0.78), fill=c, outline=o, width=f.line)
    d.polygon([f.p(0.3, 0.27), f.p(0.5, 0.08), f.p(0.55, 0.3)], fill=shade(c, 0.75), outline=o, width=f.line)
    d.ellipse(f.r(0.12, 0.38, 0.22, 0.48), fill=(255, 255, 255), outline=OUTLINE, width=1)
    d.ellipse(f.r(0.15, 0.41, 0.2, 0.46), fill=(0, 0, 0))


def draw_flower(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.line([f.p(0.5, 0.45), f.p(0.5, 1)], fill=STEM_GREEN, width=max(2, f.line * 2))
    d.ellipse(f.r(0.5, 0.66, 0.78, 0.78), fill=STEM_GREEN)
    for u, v in ((0.5, 0.1), (0.74, 0.27), (0.65, 0.52), (0.35, 0.52), (0.26, 0.27)):
        d.ellipse(f.r(u - 0.16, v - 0.14, u + 0.16, v + 0.14), fill=c, outline=o, width=f.line)
    centre = (250, 150, 20) if c[0] > 200 and c[1] > 180 else (250, 215, 40)
    d.ellipse(f.r(0.39, 0.21, 0.61, 0.43), fill=centre, outline=o, width=f.line)


def draw_umbrella(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.line([f.p(0.5, 0.45), f.p(0.5, 0.9)], fill=DARK_GREY, width=max(2, f.line))
    d.arc(f.r(0.5, 0.8, 0.7, 1.0), 0, 180, fill=DARK_GREY, width=max(2, f.line))
    d.pieslice(f.r(0, 0.05, 1, 0.95), 180, 360, fill=c, outline=o, width=f.line)
    for u in (0.25, 0.5, 0.75):
        d.line([f.p(0.5, 0.05), f.p(u, 0.5)], fill=shade(c, 0.65), width=max(1, f.line - 1))


def draw_bird(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.line([f.p(0.38, 0.8), f.p(0.36, 1)], fill=(200, 120, 20), width=f.line)
    d.line([f.p(0.52, 0.8), f.p(0.54, 1)], fill=(200, 120, 20), width=f.line)
    d.polygon([f.p(0.12, 0.55), f.p(0, 0.35), f.p(0.05, 0.65)], fill=shade(c, 0.7), outline=o, width=f.line)
    d.ellipse(f.r(0.08, 0.38, 0.75, 0.86), fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.52, 0.14, 0.88, 0.5), fill=c, outline=o, width=f.line)
    beak = (250, 200, 30) if c[0] > 200 and 100 < c[1] < 180 else (245, 140, 20)
    d.polygon([f.p(0.86, 0.26), f.p(1, 0.34), f.p(0.86, 0.4)], fill=beak, outline=OUTLINE)
    d.ellipse(f.r(0.68, 0.24, 0.76, 0.32), fill=(0, 0, 0))
    d.polygon([f.p(0.22, 0.52), f.p(0.55, 0.5), f.p(0.35, 0.72)], fill=shade(c, 0.7), outline=o, width=f.line)


def draw_boat(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.line([f.p(0.48, 0.03), f.p(0.48, 0.72)], fill=BROWN, width=max(2, f.line))
    d.polygon([f.p(0.52, 0.06), f.p(0.52, 0.64), f.p(0.9, 0.64)], fill=(250, 250, 246), outline=OUTLINE, width=f.line)
    d.polygon([f.p(0.44, 0.14), f.p(0.44, 0.64), f.p(0.14, 0.64)], fill=(235, 235, 228), outline=OUTLINE, width=f.line)
    d.polygon([f.p(0, 0.68), f.p(1, 0.68), f.p(0.82, 0.98), f.p(0.18, 0.98)], fill=c, outline=o, width=f.line)


def draw_clock(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.ellipse(f.r(0.02, 0.02, 0.98, 0.98), fill=c, outline=o, width=f.line)
    face = (255, 246, 200) if sum(c) > 700 else (250, 250, 250)
    d.ellipse(f.r(0.14, 0.14, 0.86, 0.86), fill=face, outline=o, width=max(1, f.line - 1))
    for u, v in ((0.5, 0.2), (0.8, 0.5), (0.5, 0.8), (0.2, 0.5)):
        d.ellipse(f.r(u - 0.03, v - 0.03, u + 0.03, v + 0.03), fill=OUTLINE)
    d.line([f.p(0.5, 0.5), f.p(0.5, 0.24)], fill=OUTLINE, width=f.line)
    d.line([f.p(0.5, 0.5), f.p(0.7, 0.58)], fill=OUTLINE, width=f.line)


def draw_bottle(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.rectangle(f.r(0.4, 0.1, 0.6, 0.36), fill=c, outline=o, width=f.line)
    d.rectangle(f.r(0.37, 0.0, 0.63, 0.12), fill=DARK_GREY, outline=OUTLINE, width=f.line)
    d.polygon([f.p(0.4, 0.3), f.p(0.6, 0.3), f.p(0.76, 0.44), f.p(0.24, 0.44)], fill=c, outline=o, width=f.line)
    d.rounded_rectangle(f.r(0.24, 0.42, 0.76, 1), radius=f.w * 0.08, fill=c, outline=o, width=f.line)
    d.rectangle(f.r(0.3, 0.6, 0.7, 0.8), fill=shade(c, 1.5))


def draw_rocket(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.polygon([f.p(0.4, 0.84), f.p(0.6, 0.84), f.p(0.5, 1.0)], fill=(250, 160, 30))
    for side in (0, 1):
        u0, u1 = (0.34, 0.16) if side == 0 else (0.66, 0.84)
        d.polygon([f.p(u0, 0.58), f.p(u1, 0.86), f.p(u0, 0.82)], fill=shade(c, 0.6), outline=o, width=f.line)
    d.rectangle(f.r(0.34, 0.26, 0.66, 0.85), fill=c, outline=o, width=f.line)
    d.polygon([f.p(0.34, 0.27), f.p(0.5, 0.0), f.p(0.66, 0.27)], fill=shade(c, 0.65), outline=o, width=f.line)
    d.ellipse(f.r(0.41, 0.36, 0.59, 0.52), fill=GLASS, outline=OUTLINE, width=f.line)


def draw_guitar(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.rectangle(f.r(0.46, 0.0, 0.54, 0.5), fill=BROWN, outline=OUTLINE, width=max(1, f.line - 1))
    d.rectangle(f.r(0.42, 0.0, 0.58, 0.09), fill=(60, 40, 20))
    d.ellipse(f.r(0.18, 0.5, 0.82, 1.0), fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.27, 0.3, 0.73, 0.7), fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.18 + 0.01, 0.5 + 0.01, 0.82 - 0.01, 1.0 - 0.01), fill=c)  # hides the seam
    d.ellipse(f.r(0.41, 0.55, 0.59, 0.73), fill=(20, 20, 20))
    d.line([f.p(0.5, 0.05), f.p(0.5, 0.9)], fill=(220, 220, 220), width=1)
    d.rectangle(f.r(0.38, 0.84, 0.62, 0.88), fill=(60, 40, 20))


def draw_crown(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    points = [f.p(0.05, 0.88), f.p(0.05, 0.3), f.p(0.27, 0.56), f.p(0.5, 0.14), f.p(0.73, 0.56), f.p(0.95, 0.3), f.p(0.95, 0.88)]
    d.polygon(points, fill=c, outline=o, width=f.line)
    d.rectangle(f.r(0.05, 0.72, 0.95, 0.88), fill=shade(c, 0.7), outline=o, width=f.line)
    for u, v in ((0.05, 0.26), (0.5, 0.1), (0.95, 0.26)):
        d.ellipse(f.r(u - 0.06, v - 0.06, u + 0.06, v + 0.06), fill=(240, 60, 120), outline=OUTLINE)
    for u in (0.28, 0.5, 0.72):
        d.ellipse(f.r(u - 0.05, 0.75, u + 0.05, 0.85), fill=(80, 200, 230))


def draw_anchor(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    thick = max(3, int(f.w * 0.1))
    d.ellipse(f.r(0.38, 0.0, 0.62, 0.2), outline=c, width=max(2, thick // 2))
    d.rectangle(f.r(0.45, 0.18, 0.55, 0.92), fill=c, outline=o, width=max(1, f.line - 1))
    d.rectangle(f.r(0.24, 0.24, 0.76, 0.32), fill=c, outline=o, width=max(1, f.line - 1))
    d.arc(f.r(0.08, 0.4, 0.92, 0.98), 15, 165, fill=c, width=thick)
    d.polygon([f.p(0.04, 0.62), f.p(0.18, 0.62), f.p(0.1, 0.5)], fill=c, outline=o)
    d.polygon([f.p(0.82, 0.62), f.p(0.96, 0.62), f.p(0.9, 0.5)], fill=c, outline=o)


def draw_lamp(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    d.rectangle(f.r(0.46, 0.38, 0.54, 0.9), fill=DARK_GREY, outline=OUTLINE, width=max(1, f.line - 1))
    d.ellipse(f.r(0.22, 0.84, 0.78, 1.0), fill=DARK_GREY, outline=OUTLINE, width=f.line)
    d.polygon([f.p(0.28, 0.0), f.p(0.72, 0.0), f.p(0.92, 0.42), f.p(0.08, 0.42)], fill=c, outline=o, width=f.line)
    d.ellipse(f.r(0.42, 0.38, 0.58, 0.48), fill=(255, 240, 150))


def draw_bicycle(d: ImageDraw.ImageDraw, f: _Frame, c: RGB, o: RGB) -> None:
    wheel = max(2, f.line)
    d.ellipse(f.r(0.0, 0.45, 0.42, 0.95), outline=(25, 25, 25), width=wheel)
    d.ellipse(f.r(0.58, 0.45, 1.0, 0.95), outline=(25, 25, 25), width=wheel)
    frame = max(2, int(f.w * 0.05))
    rear, pedal, seat, head, front = f.p(0.21, 0.7), f.p(0.48, 0.72), f.p(0.38, 0.36), f.p(0.72, 0.36), f.p(0.79, 0.7)
    d.line([rear, pedal, seat, rear], fill=c, width=frame)
    d.line([seat, head, pedal], fill=c, width=frame)
    d.line([head, front], fill=c, width=frame)
    d.line([f.p(0.72, 0.36), f.p(0.7, 0.22), f.p(0.82, 0.2)], fill=DARK_GREY, width=frame)
    d.rectangle(f.r(0.3, 0.28, 0.46, 0.34), fill=(30, 30, 30))


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, _Frame, RGB, RGB], None]] = {
    "ball": draw_ball, "box": draw_box, "tree": draw_tree, "house": draw_house, "car": draw_car,
    "cup": draw_cup, "kite": draw_kite, "fish": draw_fish, "flower": draw_flower,
    "umbrella": draw_umbrella, "bird": draw_bird, "boat": draw_boat, "clock": draw_clock,
    "bottle": draw_bottle, "rocket": draw_rocket, "guitar": draw_guitar, "crown": draw_crown,
    "anchor": draw_anchor, "lamp": draw_lamp, "bicycle": draw_bicycle,
}


def draw_object(draw: ImageDraw.ImageDraw, kind: str, box: Box, colour: RGB) -> None:
    """Draw one `kind` filling `box` (x0, y0, x1, y1) in `colour`."""
    DRAWERS[kind](draw, _Frame(box), colour, _outline_for(colour))


def front_face(kind: str, box: Box) -> Box:
    """Where a label can be printed on an object (the box's front face)."""
    f = _Frame(box)
    x0, y0, x1, y1 = f.r(0.0, 0.3, 0.75, 1.0) if kind == "box" else f.r(0.2, 0.3, 0.8, 0.9)
    return (x0, y0, x1, y1)
