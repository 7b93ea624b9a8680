"""Rendering a scene to a 128x128 RGB image with PIL.

Drawing happens on a 2x canvas that is then downsampled, which antialiases the edges like a
real (if tiny) photo. Each setting has its own background layout (sky, horizon, ground,
texture), so settings are recognisable by more than one colour. All randomness (stars, bush
positions, degradation strengths) comes from the scene's own `render_seed`, so the same scene
always gives the same pixels.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from captionlab.world.scenes import Scene, SceneObject
from captionlab.world.shapes import draw_object, front_face
from captionlab.world.vocabulary import COLOURS

IMAGE_SIZE = 128
SUPERSAMPLE = 2
S = SUPERSAMPLE

# Where each position puts the centre of an object group, in 128-pixel coordinates.
ANCHORS: dict[str, tuple[int, int]] = {
    "left": (30, 80), "right": (98, 80), "center": (64, 68), "top": (64, 30), "bottom": (64, 104),
}
OBJECT_PIXELS: dict[str, int] = {"small": 24, "large": 42}
# Far things first, so nearer groups overlap them, as in a photo.
DRAW_ORDER: dict[str, int] = {"top": 0, "left": 1, "right": 2, "center": 3, "bottom": 4}
# Copies of one group: size factor and offsets (in object widths) from the anchor.
COPY_LAYOUT: dict[int, tuple[float, tuple[tuple[float, float], ...]]] = {
    1: (1.0, ((0.0, 0.0),)),
    2: (0.78, ((-0.58, 0.0), (0.58, 0.0))),
    3: (0.66, ((0.0, -0.5), (-0.62, 0.32), (0.62, 0.32))),
}

DAY_SKY = ((120, 180, 235), (190, 225, 248))
SUNSET_SKY = ((246, 120, 96), (252, 196, 110))
PASTELS = ((250, 250, 250), (246, 240, 228), (232, 244, 250), (250, 236, 240), (236, 248, 236))


@lru_cache(maxsize=8)
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's built-in default font: shipped with Pillow, so the same glyphs everywhere.
    return ImageFont.load_default(size=pixels)


@lru_cache(maxsize=32)
def _gradient_strip(height: int, start: tuple, end: tuple) -> Image.Image:
    strip = Image.new("RGB", (1, height))
    span = max(1, height)
    strip.putdata([tuple(int(a + (b - a) * y / span) for a, b in zip(start, end)) for y in range(height)])
    return strip.resize((IMAGE_SIZE * S, height), Image.Resampling.NEAREST)


def _gradient(image: Image.Image, top: int, bottom: int, start: tuple, end: tuple) -> None:
    # Built once per (height, colours) and pasted: a gradient is the same in every image.
    image.paste(_gradient_strip(bottom - top, start, end), (0, top))


def _sky(image: Image.Image, draw: ImageDraw.ImageDraw, horizon: int, sunset: bool, rng: random.Random) -> None:
    top, bottom = SUNSET_SKY if sunset else DAY_SKY
    _gradient(image, 0, horizon * S, top, bottom)
    if sunset:
        x = rng.randint(30, 98) * S
        r = 14 * S
        draw.pieslice([x - r, horizon * S - r, x + r, horizon * S + r], 180, 360, fill=(255, 226, 130))


def _beach(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    _sky(image, d, 52, sunset, rng)
    d.rectangle([0, 52 * S, 128 * S, 64 * S], fill=(34, 110, 190))
    d.line([(0, 63 * S), (128 * S, 63 * S)], fill=(240, 248, 255), width=2 * S)
    d.rectangle([0, 64 * S, 128 * S, 128 * S], fill=(232, 208, 150))
    for _ in range(40):
        x, y = rng.randint(0, 127) * S, rng.randint(66, 127) * S
        d.point([(x, y), (x + 1, y)], fill=(200, 176, 120))


def _park(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    _sky(image, d, 50, sunset, rng)
    d.rectangle([0, 50 * S, 128 * S, 128 * S], fill=(84, 168, 72))
    for _ in range(5):
        x = rng.randint(-10, 128)
        d.ellipse([x * S, 42 * S, (x + rng.randint(18, 30)) * S, 58 * S], fill=(46, 120, 50))
    for _ in range(30):
        x, y = rng.randint(0, 127) * S, rng.randint(60, 127) * S
        d.line([(x, y), (x + S, y - 3 * S)], fill=(60, 140, 56), width=S)


def _street(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    _sky(image, d, 44, sunset, rng)
    x = 0
    while x < 128:
        w, h = rng.randint(16, 30), rng.randint(14, 34)
        grey = rng.randint(120, 170)
        d.rectangle([x * S, (72 - h) * S, (x + w) * S, 72 * S], fill=(grey, grey, grey + 8))
        for wy in range(72 - h + 4, 68, 8):
            for wx in range(x + 3, x + w - 4, 7):
                d.rectangle([wx * S, wy * S, (wx + 3) * S, (wy + 4) * S], fill=(220, 230, 150))
        x += w + 1
    d.rectangle([0, 72 * S, 128 * S, 80 * S], fill=(184, 182, 176))
    d.rectangle([0, 80 * S, 128 * S, 128 * S], fill=(88, 88, 94))
    for x in range(4, 128, 20):
        d.rectangle([x * S, 103 * S, (x + 10) * S, 105 * S], fill=(245, 245, 245))


def _kitchen(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    d.rectangle([0, 0, 128 * S, 74 * S], fill=(236, 226, 204))
    for v in range(0, 74, 14):
        d.line([(0, v * S), (128 * S, v * S)], fill=(214, 200, 176), width=S)
    for u in range(rng.randint(0, 13), 128, 14):
        d.line([(u * S, 0), (u * S, 74 * S)], fill=(214, 200, 176), width=S)
    d.rectangle([0, 74 * S, 128 * S, 128 * S], fill=(152, 102, 62))
    d.rectangle([0, 74 * S, 128 * S, 78 * S], fill=(118, 78, 44))


def _snow(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    if sunset:
        _sky(image, d, 56, sunset, rng)
    else:  # a paler, overcast winter sky
        _gradient(image, 0, 56 * S, (196, 210, 230), (226, 232, 242))
    for _ in range(3):
        x, h = rng.randint(-20, 110), rng.randint(16, 30)
        d.polygon([(x * S, 56 * S), ((x + 24) * S, (56 - h) * S), ((x + 48) * S, 56 * S)], fill=(150, 164, 190))
        d.polygon([((x + 17) * S, (56 - h + 7) * S), ((x + 24) * S, (56 - h) * S), ((x + 31) * S, (56 - h + 7) * S)], fill=(250, 250, 255))
    d.rectangle([0, 56 * S, 128 * S, 128 * S], fill=(246, 248, 252))
    for _ in range(6):
        x, y = rng.randint(-20, 110), rng.randint(64, 120)
        d.arc([x * S, y * S, (x + 40) * S, (y + 10) * S], 200, 340, fill=(200, 212, 230), width=S)


def _night(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    _gradient(image, 0, 128 * S, (10, 14, 44), (34, 40, 86))
    for _ in range(34):
        x, y = rng.randint(0, 127) * S, rng.randint(0, 100) * S
        d.rectangle([x, y, x + S - 1 + rng.randint(0, 1), y + S - 1], fill=(250, 250, 236))
    x = rng.choice((18, 110))
    d.ellipse([(x - 8) * S, 8 * S, (x + 8) * S, 24 * S], fill=(244, 238, 200))
    d.rectangle([0, 112 * S, 128 * S, 128 * S], fill=(22, 26, 36))


def _room(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    d.rectangle([0, 0, 128 * S, 82 * S], fill=(206, 186, 214))
    for u in range(rng.randint(0, 11), 128, 12):
        d.rectangle([u * S, 0, (u + 4) * S, 82 * S], fill=(192, 170, 202))
    d.rectangle([0, 82 * S, 128 * S, 128 * S], fill=(174, 124, 80))
    d.rectangle([0, 80 * S, 128 * S, 84 * S], fill=(240, 236, 230))
    for v in range(92, 128, 10):
        d.line([(0, v * S), (128 * S, v * S)], fill=(142, 98, 60), width=S)


def _lake(image: Image.Image, d: ImageDraw.ImageDraw, rng: random.Random, sunset: bool) -> None:
    _sky(image, d, 46, sunset, rng)
    d.rectangle([0, 44 * S, 128 * S, 52 * S], fill=(70, 122, 72))
    d.rectangle([0, 52 * S, 128 * S, 128 * S], fill=(42, 118, 170))
    for _ in range(16):
        x, y = rng.randint(-10, 120), rng.randint(58, 124)
        d.arc([x * S, y * S, (x + 16) * S, (y + 6) * S], 200, 340, fill=(104, 170, 214), width=S)


BACKGROUNDS = {
    "beach": _beach, "park": _park, "street": _street, "kitchen": _kitchen,
    "snow": _snow, "night": _night, "room": _room, "lake": _lake,
}


def _illustration(d: ImageDraw.ImageDraw, rng: random.Random) -> None:
    d.rectangle([0, 0, 128 * S, 128 * S], fill=rng.choice(PASTELS))


def _draw_group(draw: ImageDraw.ImageDraw, group: SceneObject) -> list[tuple[float, float, float, float]]:
    ax, ay = ANCHORS[group.position]
    factor, offsets = COPY_LAYOUT[group.count]
    side = OBJECT_PIXELS[group.size] * factor
    boxes = []
    for dx, dy in offsets:
        cx = min(max(ax + dx * side, side / 2 + 1), IMAGE_SIZE - side / 2 - 1)
        cy = min(max(ay + dy * side, side / 2 + 1), IMAGE_SIZE - side / 2 - 1)
        box = ((cx - side / 2) * S, (cy - side / 2) * S, (cx + side / 2) * S, (cy + side / 2) * S)
        draw_object(draw, group.kind, box, COLOURS[group.colour])
        boxes.append(box)
    return boxes


def _text(draw: ImageDraw.ImageDraw, text: str, centre: tuple[float, float], pixels: int, colour: tuple) -> tuple[float, float]:
    font = _font(pixels * S)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    draw.text((centre[0] - width / 2 - left, centre[1] - height / 2 - top), text, font=font, fill=colour)
    return width, height


def _draw_word(draw: ImageDraw.ImageDraw, scene: Scene, rng: random.Random, label_box: tuple | None) -> None:
    word = (scene.word or "").upper()
    board, ink = rng.choice((((250, 250, 246), (20, 20, 20)), ((30, 110, 60), (255, 255, 255)), ((200, 30, 40), (255, 255, 255)), ((24, 40, 110), (255, 255, 255))))
    if scene.word_carrier == "label" and label_box is not None:
        x0, y0, x1, y1 = front_face("box", label_box)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        pixels = 10 if len(word) > 4 else 12
        font = _font(pixels * S)
        l, t, r, b = draw.textbbox((0, 0), word, font=font)
        draw.rectangle([cx - (r - l) / 2 - 2 * S, cy - (b - t) / 2 - 2 * S, cx + (r - l) / 2 + 2 * S, cy + (b - t) / 2 + 2 * S], fill=(250, 250, 246), outline=(20, 20, 20), width=S)
        _text(draw, word, (cx, cy), pixels, (20, 20, 20))
        return
    if scene.word_carrier == "banner":
        draw.rectangle([4 * S, 4 * S, 124 * S, 28 * S], fill=board, outline=(20, 20, 20), width=S)
        _text(draw, word, (64 * S, 16 * S), 16, ink)
        return
    ax, ay = ANCHORS[scene.word_position or "center"]
    font = _font(14 * S)
    l, t, r, b = draw.textbbox((0, 0), word, font=font)
    half_w, half_h = (r - l) / 2 + 4 * S, (b - t) / 2 + 4 * S
    cx = min(max(ax * S, half_w + 2 * S), (IMAGE_SIZE - 2) * S - half_w)
    cy = (ay - 8) * S
    draw.rectangle([cx - 1.5 * S, cy, cx + 1.5 * S, (ay + 18) * S], fill=(90, 90, 96))
    draw.rectangle([cx - half_w, cy - half_h, cx + half_w, cy + half_h], fill=board, outline=(20, 20, 20), width=S)
    _text(draw, word, (cx, cy), 14, ink)


def _degrade(image: Image.Image, scene: Scene, rng: random.Random) -> Image.Image:
    severe = scene.severe
    if "cropped" in scene.degradations:
        # Only part of the scene is in the frame, as when the camera is aimed off the subject.
        side = int(IMAGE_SIZE * (rng.uniform(0.4, 0.5) if severe else rng.uniform(0.58, 0.72)))
        x, y = rng.randint(0, IMAGE_SIZE - side), rng.randint(0, IMAGE_SIZE - side)
        image = image.crop((x, y, x + side, y + side)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    if "tilted" in scene.degradations:
        angle = rng.uniform(40, 60) if severe else rng.uniform(18, 35)
        image = image.rotate(angle * rng.choice((-1, 1)), resample=Image.Resampling.BICUBIC, fillcolor=(34, 34, 34))
    if "blurry" in scene.degradations:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(3.5, 4.5) if severe else rng.uniform(1.5, 2.5)))
    if "dark" in scene.degradations:
        image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.08, 0.14) if severe else rng.uniform(0.26, 0.4))
    return image


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as a 128x128 RGB image (degradations included)."""
    rng = random.Random(scene.render_seed)
    canvas = Image.new("RGB", (IMAGE_SIZE * S, IMAGE_SIZE * S))
    draw = ImageDraw.Draw(canvas)
    if scene.style == "illustration":
        _illustration(draw, rng)
    else:
        BACKGROUNDS[scene.setting](canvas, draw, rng, scene.style == "sunset")
    label_box = None
    for group in sorted(scene.objects, key=lambda g: DRAW_ORDER[g.position]):
        boxes = _draw_group(draw, group)
        if group is scene.objects[0]:
            label_box = boxes[0]
    if scene.word:
        _draw_word(draw, scene, rng, label_box)
    image = canvas.reduce(SUPERSAMPLE)  # 2x2 box average: antialiased edges, and fast
    if scene.degradations:
        image = _degrade(image, scene, rng)
    return image
