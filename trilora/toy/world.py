"""A toy world: small square renders of one building each, with a caption and known ground truth.

Each render shows a building in one architectural style, wall colour and number of floors, under
the sky of one time of day; its caption says all four ("a red gothic building with three floors
at dusk") and `parse_caption` reads them back, so a judge can score what a model draws. The
styles differ in shape (roof, windows, ornament), not in colour. `UNSEEN_STYLES` are kept out of
the base model's training data, for adapters to learn.

A render is a pure function of (attributes, seed, size). The seed alone fixes the layout (scale,
width and position of the building, colour jitter, stars and clouds), whatever the attributes,
so two renders with one seed that differ in one attribute differ only in what that attribute
draws, and one seed at two sizes gives one scene. Drawn with PIL at 4x the size and
box-downsampled: slopes and curves are anti-aliased; rectangles are snapped to whole output
pixels so that window grids and timber lines stay crisp at 32 px.
"""

import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from trilora.files import save_image, write_text

STYLES = ("modern", "classical", "gothic", "tudor", "pagoda", "onion")
BASE_STYLES = ("modern", "classical", "gothic", "tudor")  # what the base model is trained on
UNSEEN_STYLES = ("onion", "pagoda")  # never in the base model's data: for adapters to learn
STYLE_WORDS = {style: style for style in STYLES} | {"onion": "onion-domed"}  # as written in captions

COLOURS = {  # wall colours, at least 70 apart in RGB; renders jitter each channel by up to ±JITTER
    "red": (200, 40, 40),
    "orange": (235, 135, 30),
    "yellow": (235, 205, 50),
    "green": (60, 150, 60),
    "blue": (45, 85, 205),
    "purple": (130, 60, 165),
    "pink": (240, 135, 185),
    "white": (235, 232, 222),
}
JITTER = 12
FLOORS = (1, 2, 3)
FLOOR_WORDS = {1: "one", 2: "two", 3: "three"}
TIMES = ("day", "dusk", "night")
TIME_PHRASES = {"day": "during the day", "dusk": "at dusk", "night": "at night"}

SUPERSAMPLE = 4
SKY = {  # (top, horizon)
    "day": ((105, 165, 225), (185, 220, 245)),
    "dusk": ((80, 55, 130), (250, 150, 75)),
    "night": ((6, 8, 28), (30, 36, 84)),
}
GROUND = {"day": (135, 128, 115), "dusk": (100, 82, 84), "night": (44, 44, 54)}
ROOF = {"day": (66, 62, 74), "dusk": (38, 30, 44), "night": (104, 104, 126)}  # lit by the moon at night
WINDOW = (28, 32, 46)
TIMBER = (58, 38, 26)
PARTS = {  # render_mask parts: the roles drawn in them
    "building": frozenset({"wall", "trim", "roof", "window"}),
    "wall": frozenset({"wall"}),
    "roof": frozenset({"roof"}),
    "window": frozenset({"window"}),
}


@dataclass(frozen=True)
class Attributes:
    """What one render shows; each field is one of STYLES, COLOURS, FLOORS, TIMES."""

    style: str
    colour: str
    floors: int
    time: str

    def __post_init__(self):
        for name, value, allowed in (
            ("style", self.style, STYLES),
            ("colour", self.colour, tuple(COLOURS)),
            ("floors", self.floors, FLOORS),
            ("time", self.time, TIMES),
        ):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(str, allowed))}")


def caption(a: Attributes) -> str:
    """The caption of a render: "a red gothic building with three floors at dusk"."""
    article = "an" if a.colour[0] in "aeiou" else "a"
    floors = f"{FLOOR_WORDS[a.floors]} floor{'s' if a.floors > 1 else ''}"
    return f"{article} {a.colour} {STYLE_WORDS[a.style]} building with {floors} {TIME_PHRASES[a.time]}"


_CAPTION = re.compile(r"an? (\S+) (\S+) building with (\S+) floors? (.+)")


def parse_caption(text: str) -> Attributes:
    """The attributes a caption names (the inverse of `caption`); ValueError if it is not one."""
    match = _CAPTION.fullmatch(" ".join(text.lower().split()))
    if not match:
        raise ValueError(f"not a toy-world caption: {text!r}")
    colour, style_word, floor_word, time_phrase = match.groups()
    lookups = (
        ("style", style_word, {word: style for style, word in STYLE_WORDS.items()}),
        ("floors", floor_word, {word: n for n, word in FLOOR_WORDS.items()}),
        ("time", time_phrase, {phrase: time for time, phrase in TIME_PHRASES.items()}),
    )
    found = {}
    for name, word, table in lookups:
        if word not in table:
            raise ValueError(f"unknown {name} {word!r} in caption {text!r}")
        found[name] = table[word]
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r} in caption {text!r}")
    return Attributes(found["style"], colour, found["floors"], found["time"])


def sample_attributes(
    rng: random.Random, styles: tuple[str, ...] = BASE_STYLES, colours: tuple[str, ...] | None = None
) -> Attributes:
    """Uniformly random attributes among `styles` and `colours` (default: all colours), floors and times."""
    colours = tuple(COLOURS) if colours is None else tuple(colours)
    for name, given, known in (("style", styles, STYLES), ("colour", colours, COLOURS)):
        unknown = [value for value in given if value not in known]
        if unknown or not given:
            raise ValueError(f"unknown {name} {unknown[0]!r}" if unknown else f"no {name}s to choose from")
    return Attributes(rng.choice(tuple(styles)), rng.choice(colours), rng.choice(FLOORS), rng.choice(TIMES))


def render(a: Attributes, seed: int, size: int = 32) -> Image.Image:
    """A `size`x`size` RGB render of `a`; byte-for-byte the same for the same (a, seed, size)."""
    return _draw(a, seed, size, roles=None)


def render_mask(a: Attributes, seed: int, size: int = 32, part: str = "building") -> np.ndarray:
    """Ground truth for `render(a, seed, size)`: the fraction of each pixel covered by `part`.

    float32 (size, size) in [0, 1]. Parts: "building" (everything but sky and ground: > 0.5 is
    its silhouette), "wall" (the wall colour: 1 where a pixel is wall colour only), "roof",
    "window" (windows and doors).
    """
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")
    return np.asarray(_draw(a, seed, size, roles=PARTS[part]), dtype=np.float32) / 255


def render_dataset(
    folder: str | Path,
    count: int,
    seed: int,
    styles: tuple[str, ...] = BASE_STYLES,
    colours: tuple[str, ...] | None = None,
    size: int = 32,
) -> list[Attributes]:
    """Write `count` random renders as NNNNN.png with their captions in NNNNN.txt (what `trilora train` reads).

    Returns the attributes of each image in order; the same arguments write the same files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    digits = max(5, len(str(count - 1)))
    written = []
    for index in range(count):
        a = sample_attributes(rng, styles, colours)
        image = render(a, rng.getrandbits(32), size)
        save_image(image, folder / f"{index:0{digits}d}.png")
        write_text(folder / f"{index:0{digits}d}.txt", caption(a) + "\n")
        written.append(a)
    return written


# Drawing. Lengths are in supersampled pixels; `u` is the height of one floor.

# style: (body width, overhang beyond the body on each side, height above the body top), in floors
SHAPES = {
    "modern": (2.6, 0.1, 0.6),
    "classical": (3.0, 0.3, 1.0),
    "gothic": (2.5, 0.1, 2.35),
    "tudor": (2.3, 0.45, 1.55),
    "pagoda": (2.4, 0.55, 1.3),
    "onion": (2.5, 0.1, 1.85),
}


@dataclass(frozen=True)
class _Layout:
    u: float  # height of one floor
    w: float  # width of the body
    cx: float  # centre of the building
    ground: float  # y of the ground line
    floors: int
    details: tuple[float, ...]  # uniform [0, 1) numbers for a style's small choices

    @property
    def x0(self) -> float:
        return self.cx - self.w / 2

    @property
    def x1(self) -> float:
        return self.cx + self.w / 2

    @property
    def top(self) -> float:
        return self.ground - self.floors * self.u


@dataclass(frozen=True)
class _Colours:
    wall: tuple[int, int, int]
    trim: tuple[int, int, int]  # columns, steps, cornices: the wall made lighter or darker
    roof: tuple[int, int, int]


class _Pen:
    """Draws each shape in its colour, or, given `roles`, white where the shape's role is in them and black elsewhere."""

    def __init__(self, image: Image.Image, roles: frozenset[str] | None):
        self.draw = ImageDraw.Draw(image)
        self.roles = roles

    def _fill(self, role: str, colour):
        return colour if self.roles is None else (255 if role in self.roles else 0)

    def rect(self, role, colour, x0, y0, x1, y1):
        """A rectangle with its sides snapped to whole output pixels, at least one pixel wide and high."""
        x0, x1 = _snap_span(x0, x1)
        y0, y1 = _snap_span(y0, y1)
        self.draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=self._fill(role, colour))

    def polygon(self, role, colour, points):
        self.draw.polygon([(round(x), round(y)) for x, y in points], fill=self._fill(role, colour))

    def ellipse(self, role, colour, cx, cy, rx, ry=None):
        ry = rx if ry is None else ry
        box = (round(cx - rx), round(cy - ry), round(cx + rx) - 1, round(cy + ry) - 1)
        self.draw.ellipse(box, fill=self._fill(role, colour))

    def triangle(self, role, colour, cx, half_width, base, apex):
        """An upright isosceles triangle: base from cx - half_width to cx + half_width at y = base."""
        self.polygon(role, colour, [(cx - half_width, base), (cx, apex), (cx + half_width, base)])

    def symmetric(self, role, colour, cx, right_half):
        """A polygon symmetric about x = cx, from its right half: (x from the axis, y) top to bottom or back."""
        left = [(cx - x, y) for x, y in reversed(right_half) if x > 0]
        self.polygon(role, colour, [(cx + x, y) for x, y in right_half] + left)


def _snap_span(a: float, b: float) -> tuple[int, int]:
    """[a, b) moved to whole output pixels, at least one wide (then centred where [a, b) was)."""
    lo, hi = round(a / SUPERSAMPLE), round(b / SUPERSAMPLE)
    if hi - lo < 1:
        lo = round((a + b) / 2 / SUPERSAMPLE - 0.5)
        hi = lo + 1
    return lo * SUPERSAMPLE, hi * SUPERSAMPLE


def _draw(a: Attributes, seed: int, size: int, roles: frozenset[str] | None) -> Image.Image:
    if not isinstance(size, int) or size < 16:
        raise ValueError(f"size must be an integer of at least 16 pixels; got {size!r}")
    big = size * SUPERSAMPLE
    rng = random.Random(seed)
    # Every random number is drawn here, in the same order whatever the attributes (see the module doc).
    scale, aspect, ground_frac, position = (
        rng.uniform(0.88, 1.1),
        rng.uniform(0.85, 1.15),
        rng.uniform(0.09, 0.14),
        rng.random(),
    )
    jitter = [rng.randint(-JITTER, JITTER) for _ in range(3)]
    details = tuple(rng.random() for _ in range(4))
    sky_details = [rng.random() for _ in range(40)]

    body_width, overhang, above = SHAPES[a.style]
    ground = big * (1 - ground_frac)
    u = min(0.148 * big * scale, (ground - 0.04 * big) / (a.floors + above))
    w = body_width * u * aspect
    half = w / 2 + overhang * u
    margin = 0.04 * big
    cx = margin + half + position * max(0.0, big - 2 * margin - 2 * half)
    layout = _Layout(u, w, cx, ground, a.floors, details)

    wall = tuple(min(255, max(0, c + j)) for c, j in zip(COLOURS[a.colour], jitter, strict=True))
    colours = _Colours(wall, _trim(wall), ROOF[a.time])

    if roles is None:
        image = _sky(a.time, big).copy()
        pen = _Pen(image, None)
        _draw_sky_details(pen, a.time, big, ground, sky_details)
        pen.rect("ground", GROUND[a.time], 0, ground, big, big)
    else:
        image = Image.new("L", (big, big), 0)
        pen = _Pen(image, roles)
    STYLE_PAINTERS[a.style](pen, layout, colours)
    return image.resize((size, size), Image.Resampling.BOX)


def _trim(wall):
    luminance = 0.299 * wall[0] + 0.587 * wall[1] + 0.114 * wall[2]
    if luminance > 160:
        return tuple(round(c * 0.72) for c in wall)
    return tuple(round(c + (255 - c) * 0.5) for c in wall)


@functools.lru_cache(maxsize=16)
def _sky(time: str, big: int) -> Image.Image:
    top, horizon = (np.array(c, dtype=np.float32) for c in SKY[time])
    t = np.linspace(0, 1, big, dtype=np.float32)[:, None, None] ** 1.3  # (big, 1, 1)
    rows = top * (1 - t) + horizon * t  # (big, 1, 3)
    return Image.fromarray(np.broadcast_to(rows, (big, big, 3)).round().astype(np.uint8))


def _draw_sky_details(pen: _Pen, time: str, big: int, ground: float, r: list[float]):
    """Sun and clouds by day, a low sun at dusk, moon and stars at night; behind the building."""
    if time == "day":
        pen.ellipse(
            "sky", (255, 244, 190), big * (0.08 + 0.84 * r[0]), big * (0.06 + 0.12 * r[1]), big * 0.05
        )
        for i in range(int(r[2] * 3)):  # up to two clouds of three puffs
            x, y, length = (
                big * r[3 + 3 * i],
                big * (0.12 + 0.25 * r[4 + 3 * i]),
                big * (0.12 + 0.1 * r[5 + 3 * i]),
            )
            for dx, dy, radius in ((0, 0, 0.45), (0.35, -0.12, 0.35), (-0.35, 0.03, 0.3)):
                cx, cy = x + dx * length, y + dy * length
                pen.ellipse("sky", (245, 248, 252), cx, cy, radius * length, radius * length * 0.6)
    elif time == "dusk":  # a sun setting behind the ground line
        pen.ellipse("sky", (255, 205, 110), big * (0.1 + 0.8 * r[0]), ground + big * 0.02, big * 0.09)
    else:  # a crescent moon (a disc with a disc of sky over it) and stars, one pixel each
        x, y, radius = big * (0.1 + 0.8 * r[0]), big * (0.08 + 0.1 * r[1]), big * 0.055
        pen.ellipse("sky", (240, 236, 210), x, y, radius)
        pen.ellipse("sky", SKY["night"][0], x + 0.55 * radius, y - 0.3 * radius, 0.75 * radius)
        for i in range(10 + int(r[2] * 8)):
            x, y = r[3 + 2 * i] * big, r[4 + 2 * i] * ground * 0.8
            grey = 150 + int(105 * r[(7 * i) % 40])
            pen.rect("sky", (grey, grey, grey - 20), x, y, x + SUPERSAMPLE, y + SUPERSAMPLE)


# Windows: each takes the centre of the window and its width and height.


def _window_square(pen, cx, cy, width, height, role="window"):
    pen.rect(role, WINDOW, cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2)


def _window_pointed(pen, cx, cy, width, height):
    """A pointed (gothic) arch: a rectangle under a steep triangle a third of the height."""
    x0, x1 = _snap_span(cx - width / 2, cx + width / 2)
    spring = cy - height / 6
    pen.rect("window", WINDOW, x0, spring, x1, cy + height / 2)
    pen.triangle("window", WINDOW, (x0 + x1) / 2, (x1 - x0) / 2, spring + 1, cy - height / 2 - 2)


def _window_round(pen, cx, cy, width, height):
    pen.ellipse("window", WINDOW, cx, cy, min(width, height) / 2)


def _door_arched(pen, cx, bottom, width, height):
    x0, x1 = _snap_span(cx - width / 2, cx + width / 2)
    radius = (x1 - x0) / 2
    pen.rect("window", WINDOW, x0, bottom - height + radius, x1, bottom)
    pen.ellipse("window", WINDOW, x0 + radius, bottom - height + radius, radius)


def _rows(g: _Layout):
    """(floor index, y of the floor's bottom) from the ground floor up."""
    return [(k, g.ground - k * g.u) for k in range(g.floors)]


def _columns(x0: float, x1: float, n: int) -> list[float]:
    return [x0 + (x1 - x0) * (i + 0.5) / n for i in range(n)]


# Styles. Each draws the building only; the sky and the ground are already there.


def _modern(pen: _Pen, g: _Layout, c: _Colours):
    """A box with a flat roof slab and a grid of square windows, a small rooftop block."""
    u = g.u
    pen.rect("wall", c.wall, g.x0, g.top, g.x1, g.ground)
    pen.rect("roof", c.roof, g.x0 - 0.1 * u, g.top - 0.2 * u, g.x1 + 0.1 * u, g.top)
    side = g.x0 + 0.2 * u if g.details[0] < 0.5 else g.x1 - 0.9 * u
    pen.rect("roof", c.roof, side, g.top - 0.55 * u, side + 0.7 * u, g.top - 0.1 * u)
    n = 4 if g.w > 2.4 * u else 3
    for _, bottom in _rows(g):
        for x in _columns(g.x0 + 0.1 * u, g.x1 - 0.1 * u, n):
            _window_square(pen, x, bottom - 0.5 * u, 0.45 * u, 0.45 * u)


def _classical(pen: _Pen, g: _Layout, c: _Colours):
    """A temple front: steps, columns, tall windows between them, an entablature and a low pediment."""
    u = g.u
    step = 0.12 * u
    top = g.top - 2 * step  # the body stands on two steps
    pen.rect("trim", c.trim, g.x0 - 0.3 * u, g.ground - step, g.x1 + 0.3 * u, g.ground)
    pen.rect("trim", c.trim, g.x0 - 0.15 * u, g.ground - 2 * step, g.x1 + 0.15 * u, g.ground - step)
    pen.rect("wall", c.wall, g.x0, top, g.x1, g.ground - 2 * step)
    n = 3
    for i in range(n + 1):
        x = g.x0 + 0.12 * u + (g.w - 0.24 * u) * i / n
        pen.rect("trim", c.trim, x - 0.11 * u, top, x + 0.11 * u, g.ground - 2 * step)
    for k in range(g.floors):
        bottom = g.ground - 2 * step - k * g.u
        for x in _columns(g.x0 + 0.12 * u, g.x1 - 0.12 * u, n):
            _window_square(pen, x, bottom - 0.45 * u, 0.3 * u, 0.55 * u)
    eave = top + 0.05 * u
    pen.rect("roof", c.roof, g.x0 - 0.25 * u, top - 0.2 * u, g.x1 + 0.25 * u, eave)
    base, apex = top - 0.2 * u, top - 0.8 * u
    pen.triangle("roof", c.roof, g.cx, g.w / 2 + 0.3 * u, base, apex)
    # the tympanum, the pediment's inner triangle, in the colour of the columns
    pen.triangle("trim", c.trim, g.cx, g.w / 2 - 0.28 * u, base - 0.1 * u, apex + 0.22 * u)


def _gothic(pen: _Pen, g: _Layout, c: _Colours):
    """A church: a steep roof, corner pinnacles, a central tower with a tall spire, pointed-arch windows."""
    u = g.u
    pen.rect("wall", c.wall, g.x0, g.top, g.x1, g.ground)
    pen.triangle("roof", c.roof, g.cx, g.w / 2 + 0.05 * u, g.top, g.top - 1.0 * u)
    for x in (g.x0 + 0.12 * u, g.x1 - 0.12 * u):  # pinnacles
        pen.triangle("roof", c.roof, x, 0.18 * u, g.top, g.top - 0.8 * u)
    half, tower_top = 0.36 * u, g.top - 0.95 * u
    pen.rect("wall", c.wall, g.cx - half, tower_top, g.cx + half, g.top)
    pen.triangle("roof", c.roof, g.cx, half + 0.08 * u, tower_top, tower_top - 1.4 * u)
    _window_pointed(pen, g.cx, g.top - 0.45 * u, 0.24 * u, 0.6 * u)
    for k, bottom in _rows(g):
        xs = _columns(g.x0 + 0.05 * u, g.x1 - 0.05 * u, 3)
        for i, x in enumerate(xs):
            if k == 0 and i == 1:
                _door_arched(pen, x, bottom, 0.4 * u, 0.75 * u)
            else:
                _window_pointed(pen, x, bottom - 0.48 * u, 0.3 * u, 0.68 * u)


def _tudor(pen: _Pen, g: _Layout, c: _Colours):
    """A half-timbered house: upper floors jut out, dark beams, a steep front gable and a chimney."""
    u = g.u
    beam = 0.14 * u
    jetty = 0.1 * u
    for k, bottom in _rows(g):
        x0, x1 = g.x0 - k * jetty, g.x1 + k * jetty
        pen.rect("wall", c.wall, x0, bottom - u, x1, bottom)
        pen.rect("trim", TIMBER, x0, bottom - beam, x1, bottom)  # sill beam
        mid = (x0 + x1) / 2
        for x in (x0 + beam / 2, mid, x1 - beam / 2):  # posts
            pen.rect("trim", TIMBER, x - beam / 2, bottom - u, x + beam / 2, bottom)
        for x in (x0 + (mid - x0) * 0.5, mid + (x1 - mid) * 0.5):
            if k == 0 and x > mid:
                pen.rect("window", WINDOW, x - 0.2 * u, bottom - 0.8 * u, x + 0.2 * u, bottom - beam)  # door
            else:
                _window_square(pen, x, bottom - 0.5 * u, 0.4 * u, 0.4 * u)
    x0, x1 = g.x0 - (g.floors - 1) * jetty, g.x1 + (g.floors - 1) * jetty
    pen.rect("trim", TIMBER, x0, g.top - beam, x1, g.top)
    half, apex = (x1 - x0) / 2 + 0.3 * u, g.top - 1.5 * u
    chimney = g.cx + (-1 if g.details[0] < 0.5 else 1) * 0.3 * g.w
    pen.rect("roof", c.roof, chimney - 0.16 * u, apex + 0.1 * u, chimney + 0.16 * u, g.top - 0.4 * u)
    pen.triangle("roof", c.roof, g.cx, half, g.top, apex)
    # the gable wall inside the roof, with a king post
    pen.triangle("wall", c.wall, g.cx, half - 0.66 * u, g.top - beam, apex + 0.48 * u)
    pen.rect("trim", TIMBER, g.cx - beam / 2, apex + 0.48 * u, g.cx + beam / 2, g.top - beam)


def _pagoda(pen: _Pen, g: _Layout, c: _Colours):
    """Tiers that narrow upwards, each under wide eaves with upturned tips, a spike on top."""
    u = g.u
    shrink = 0.16 * u
    for k, bottom in _rows(g):
        half = g.w / 2 - k * shrink
        top = bottom - u
        pen.rect("wall", c.wall, g.cx - half, top + 0.3 * u, g.cx + half, bottom)
        xs = _columns(g.cx - half, g.cx + half, 3)
        for i, x in enumerate(xs):
            if k == 0 and i == 1:
                pen.rect("window", WINDOW, x - 0.2 * u, bottom - 0.55 * u, x + 0.2 * u, bottom)
            else:
                _window_square(pen, x, bottom - 0.32 * u, 0.3 * u, 0.32 * u)
        upper = half - shrink - 0.1 * u if k < g.floors - 1 else 0.35 * u
        roof_top = top if k < g.floors - 1 else top - 0.35 * u
        eave = half + 0.45 * u  # the eave's tips turn up
        eaves = [(upper, roof_top), (eave + 0.1 * u, top + 0.12 * u), (eave - 0.15 * u, top + 0.32 * u)]
        pen.symmetric("roof", c.roof, g.cx, eaves)
    spike = g.top - 0.35 * u
    pen.rect("roof", c.roof, g.cx - 0.05 * u, spike - 0.85 * u, g.cx + 0.05 * u, spike)
    pen.symmetric(
        "roof", c.roof, g.cx, [(0, spike - 0.5 * u), (0.2 * u, spike - 0.2 * u), (0, spike + 0.05 * u)]
    )


# An onion dome's outline, right half from the base up: x from the axis in widths, y in heights.
_ONION_X = (0.2, 0.34, 0.46, 0.5, 0.47, 0.36, 0.2, 0.08, 0.035, 0.0)
_ONION_Y = (0.0, 0.05, 0.15, 0.28, 0.42, 0.56, 0.7, 0.8, 0.88, 1.0)


def _onion_dome(pen, c: _Colours, cx: float, base: float, width: float, height: float):
    outline = [(x * width, base - y * height) for x, y in zip(_ONION_X, _ONION_Y, strict=True)]
    pen.symmetric("roof", c.roof, cx, outline)


def _onion(pen: _Pen, g: _Layout, c: _Colours):
    """A Russian church: a central drum under a big onion dome with a spike, corner turrets with small domes, round windows."""
    u = g.u
    pen.rect("wall", c.wall, g.x0, g.top, g.x1, g.ground)
    pen.rect("trim", c.trim, g.x0 - 0.06 * u, g.top - 0.12 * u, g.x1 + 0.06 * u, g.top)
    for x in (g.x0 + 0.25 * u, g.x1 - 0.25 * u):
        pen.rect("wall", c.wall, x - 0.18 * u, g.top - 0.35 * u, x + 0.18 * u, g.top)
        _onion_dome(pen, c, x, g.top - 0.3 * u, 0.8 * u, 0.85 * u)
    drum = g.top - 0.45 * u
    pen.rect("wall", c.wall, g.cx - 0.26 * u, drum, g.cx + 0.26 * u, g.top)
    _onion_dome(pen, c, g.cx, drum + 0.05 * u, 1.4 * u, 1.4 * u)
    for k, bottom in _rows(g):
        xs = _columns(g.x0 + 0.05 * u, g.x1 - 0.05 * u, 3)
        for i, x in enumerate(xs):
            if k == 0 and i == 1:
                _door_arched(pen, x, bottom, 0.42 * u, 0.72 * u)
            else:
                _window_round(pen, x, bottom - 0.52 * u, 0.46 * u, 0.46 * u)


STYLE_PAINTERS = {
    "modern": _modern,
    "classical": _classical,
    "gothic": _gothic,
    "tudor": _tudor,
    "pagoda": _pagoda,
    "onion": _onion,
}
