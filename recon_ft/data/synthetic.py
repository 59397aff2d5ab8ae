"""The built-in synthetic benchmark: procedural shape scenes with grammar captions.

A scene is 1 to 3 shapes, ordered left to right. Each shape has a kind, a colour and a size;
the caption grammar is

    caption := np ( " left of " np )*          # objects listed left to right
             | np ( " right of " np )*         # objects listed right to left
    np      := "a " SIZE " " COLOUR " " KIND

so "a small red circle left of a large blue square" and "a large blue square right of a small
red circle" describe the same scene. Every scene with two or more objects has both readings as
references; `parse_caption` maps any grammar sentence back to its scene, so caption accuracy is
measured exactly (`score_caption`), and `object_colours` / `colour_match` are a pixel oracle for
generated images (recon_ft/data/oracle.py adds each object's kind and size).

Generalization split: the (colour, kind) pairs in HELDOUT_PAIRS never occur in train or val;
every test scene contains at least one. Every kind and every colour still occurs in training,
only these combinations are new, so a model must compose attributes to caption or draw them.

Determinism: item i of split s is built from np.random.default_rng([seed, SPLIT_IDS[s], i]),
so any item can be generated on its own (in any worker, in any order) and a dataset is
identical on every machine. Rendering uses numpy only and hard masks (no anti-aliasing), so
every foreground pixel has exactly its palette colour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from recon_ft.data.sampler import pick_reference, unpack_key

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "large")
# Palette (RGB, uint8). The closest pair (yellow, orange) is 80 apart in RGB, far above what
# JPEG or a decent generator blurs, so nearest-palette classification is unambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
BACKGROUND: tuple[int, int, int] = (230, 230, 230)
MAX_OBJECTS = 3
SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
READINGS = ("all", "left_of")  # the training caption: any grammar reading, or the left-to-right one
DROP_STREAM = 7  # the random stream of drop_attributes, beside an item's scene stream

# (colour, kind) compositions never seen in train/val: one per kind, four different colours,
# so each kind and colour keeps 5 and 3-4 other partners in training.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "star"), ("yellow", "square")}
)
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, k) for c in COLOURS for k in KINDS)
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELDOUT_PAIRS)
_HELDOUT_SORTED: tuple[tuple[str, str], ...] = tuple(sorted(HELDOUT_PAIRS))

# Object extent (radius) as a fraction of half a slot's width; large is ~1.6x small.
_SIZE_SCALE = {"small": 0.55, "large": 0.85}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]  # left to right

    def __len__(self) -> int:
        return len(self.objects)


# ----------------------------------------------------------------------------- sampling


def sample_scene(rng: np.random.Generator, split: str) -> Scene:
    """1..MAX_OBJECTS shapes; train/val avoid HELDOUT_PAIRS, test puts one in a random slot."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    pool = ALL_PAIRS if split == "test" else SEEN_PAIRS
    pairs = [pool[int(rng.integers(len(pool)))] for _ in range(n)]
    if split == "test":
        pairs[int(rng.integers(n))] = _HELDOUT_SORTED[int(rng.integers(len(_HELDOUT_SORTED)))]
    sizes = [SIZES[int(rng.integers(len(SIZES)))] for _ in range(n)]
    return Scene(tuple(Shape(kind=k, colour=c, size=s) for (c, k), s in zip(pairs, sizes)))


def item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), SPLIT_IDS[split], int(index)])


def generate(seed: int, split: str, index: int, image_size: int = 64) -> tuple[Scene, np.ndarray]:
    """Item `index` of `split`: its scene and its rendered (image_size, image_size, 3) uint8 image."""
    rng = item_rng(seed, split, index)
    scene = sample_scene(rng, split)
    return scene, render(scene, image_size, rng)


# ----------------------------------------------------------------------------- captions


def captions(scene: Scene) -> list[str]:
    """All grammar readings of a scene: the left-of chain, and (2+ objects) the right-of chain."""
    phrases = [o.phrase for o in scene.objects]
    if len(phrases) == 1:
        return phrases
    return [" left of ".join(phrases), " right of ".join(reversed(phrases))]


_NP = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLOURS)}) ({'|'.join(KINDS)})"
)
_REL = re.compile(r" (left|right) of ")
# An incomplete noun phrase: size and colour may be left out ("a red circle", "a large star", "a star").
_NP_PARTIAL = re.compile(
    rf"a (?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(KINDS)})"
)
DROPPABLE: tuple[str, ...] = ("size", "colour")  # what an incomplete reference may leave out; kind never


def _normalize(text: str) -> str:
    text = " ".join(text.lower().split())
    return text.rstrip(" .")


def parse_caption(text: str) -> Scene | None:
    """Grammar sentence -> Scene (objects left to right); None if it is not a grammar sentence.

    Case, repeated whitespace and a final period are ignored. Any number of objects parses,
    so a model that names four shapes scores a count mismatch rather than a parse failure.
    A chain mixing "left of" and "right of" does not fix an order and does not parse.
    """
    objects = parse_partial(text)
    if objects is None or any(len(o) < 3 for o in objects):  # every noun phrase complete
        return None
    return Scene(tuple(Shape(**o) for o in objects))


def parse_partial(text: str) -> list[dict[str, str]] | None:
    """A grammar sentence whose noun phrases may leave out size and colour -> its objects left to
    right, each {"kind": ..., and "size" / "colour" where stated}; None if it is not such a sentence."""
    parts = _REL.split(_normalize(text))  # [np, rel, np, rel, np, ...]
    nps, rels = parts[0::2], parts[1::2]
    objects = []
    for np_text in nps:
        m = _NP_PARTIAL.fullmatch(np_text)
        if m is None:
            return None
        stated = {"size": m.group(1), "colour": m.group(2), "kind": m.group(3)}
        objects.append({k: v for k, v in stated.items() if v is not None})
    if len(set(rels)) > 1:
        return None
    if rels and rels[0] == "right":
        objects.reverse()
    return objects


def score_attributes(text: str, scene: Scene) -> dict[str, float]:
    """Attribute recall and precision of a caption that may leave attributes out.

    The caption's objects are matched to the scene's by left-to-right position, as in
    `score_caption`. An attribute it states is right when the scene's object at that position has
    it. recall: right statements over the scene's attributes (3 per object); precision: right
    statements over all the caption states (objects beyond the scene's count are all wrong).
    A caption that is not a (possibly incomplete) grammar sentence states nothing checkable and
    scores 0 on both.
    """
    pred = parse_partial(text)
    if pred is None:
        return dict(recall=0.0, precision=0.0)
    right = sum(getattr(truth, attr) == value
                for truth, stated in zip(scene.objects, pred) for attr, value in stated.items())
    stated = sum(len(o) for o in pred)
    return dict(recall=right / (3 * len(scene.objects)), precision=right / stated)


def drop_attributes(caption: str, p: float, rng: np.random.Generator) -> str:
    """`caption` with each size and colour word left out with probability p, independently (as
    human references omit details): "a small red circle" -> "a red circle" or "a circle"."""
    def drop(m: re.Match) -> str:
        words = [w for w, attr in zip(m.groups(), ("size", "colour", "kind"))
                 if attr not in DROPPABLE or rng.random() >= p]
        return "a " + " ".join(words)

    return _NP.sub(drop, caption)


def score_caption(text: str, scene: Scene) -> dict[str, float]:
    """Exact scores of a caption against the true scene (all in [0, 1]).

    parsed: the caption is a grammar sentence; exact: it parses to exactly `scene`;
    count: same number of objects; kind / colour / size: share of the scene's objects whose
    attribute is right at the same left-to-right position; attributes: mean of those three;
    recall / precision: `score_attributes`, which also scores captions that leave attributes out.
    """
    pred = parse_caption(text)
    n = len(scene.objects)
    partial = score_attributes(text, scene)
    if pred is None:
        return dict(parsed=0.0, exact=0.0, count=0.0, kind=0.0, colour=0.0, size=0.0, attributes=0.0, **partial)
    hits = {"kind": 0, "colour": 0, "size": 0}
    for truth, guess in zip(scene.objects, pred.objects):
        for attr in hits:
            hits[attr] += getattr(truth, attr) == getattr(guess, attr)
    scores = {attr: hits[attr] / n for attr in hits}
    return dict(
        parsed=1.0,
        exact=float(pred == scene),
        count=float(len(pred.objects) == n),
        **scores,
        attributes=sum(scores.values()) / 3,
        **partial,
    )


# ----------------------------------------------------------------------------- rendering


def _polygon_mask(xs: np.ndarray, ys: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test for every pixel centre; xs, ys: (H, W); vx, vy: (V,)."""
    inside = np.zeros(xs.shape, dtype=bool)
    for i in range(len(vx)):
        x0, y0, x1, y1 = vx[i - 1], vy[i - 1], vx[i], vy[i]
        if y0 == y1:
            continue
        crosses = (ys >= min(y0, y1)) & (ys < max(y0, y1))
        x_at_y = x0 + (ys - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (xs < x_at_y)
    return inside


def shape_mask(kind: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean (H, W) mask of a shape of extent radius r centred at (cx, cy)."""
    dx, dy = xs - cx, ys - cy
    if kind == "circle":
        return dx**2 + dy**2 <= r**2
    if kind == "square":
        half = 0.82 * r  # about the circle's area
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if kind == "triangle":  # apex up, base of width 2r at the bottom
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    if kind == "star":  # five points, inner radius 0.45 r
        angles = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return _polygon_mask(xs, ys, cx + radii * np.cos(angles), cy + radii * np.sin(angles))
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 image of `scene` on a plain background.

    The width is cut into MAX_OBJECTS slots; the objects take distinct slots in left-to-right
    order (which slots is random), with random jitter inside the slot horizontally and across
    the free height vertically. An object stays at least 1 px inside its slot, so objects never
    overlap, a background column separates neighbours, and the caption's left-to-right order is
    the order of the pixels. Draws from `rng`.
    """
    n = len(scene.objects)
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"render draws 1..{MAX_OBJECTS} objects, got {n}")
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # pixel centres, (H, W) each
    slot_w = size / MAX_OBJECTS
    slots = np.sort(rng.choice(MAX_OBJECTS, size=n, replace=False))
    for obj, slot in zip(scene.objects, slots):
        r = _SIZE_SCALE[obj.size] * slot_w / 2
        room_x = max(slot_w / 2 - r - 1.0, 0.0)  # >= 1 px from the slot's edges (see object_colours)
        cx = (slot + 0.5) * slot_w + rng.uniform(-room_x, room_x)
        cy = rng.uniform(r, max(size - r, r))
        image[shape_mask(obj.kind, xs, ys, cx, cy, r)] = COLOURS[obj.colour]
    return image


# ----------------------------------------------------------------------------- oracle

_PALETTE = np.array([BACKGROUND, *COLOURS.values()], dtype=np.float32)  # (7, 3), background first
_PALETTE_NAMES = ("background", *COLOURS)
PALETTE_DISTANCE = 60.0  # RGB distance within which a pixel takes a palette colour (object_runs)


def object_runs(image: np.ndarray | Image.Image, min_fraction: float = 0.004,
                max_distance: float = PALETTE_DISTANCE) -> list[tuple[str, np.ndarray]]:
    """The objects of an image, left to right: (colour name, boolean (H, W) mask of its pixels).

    Pixels within `max_distance` (RGB) of a palette colour take that colour; the others count as
    background. render() keeps a gap of at least one pixel column between objects, so each run
    of columns holding coloured pixels is one object; its colour is the run's most frequent one
    and its mask every coloured pixel of the run. Runs with fewer than `min_fraction` of the
    image's pixels are noise.
    """
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    pixels = pixels[..., :3].astype(np.float32)  # (H, W, 3)
    dist = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, 7)
    label = dist.argmin(-1)  # (H, W), 0 = background
    label[dist.min(-1) > max_distance] = 0
    filled = (label > 0).any(0)  # (W,): columns holding an object
    edges = np.flatnonzero(np.diff(np.concatenate([[0], filled.astype(np.int8), [0]])))
    found = []
    for start, stop in zip(edges[0::2], edges[1::2]):  # runs [start, stop) of filled columns
        mask = np.zeros(label.shape, dtype=bool)
        mask[:, start:stop] = label[:, start:stop] > 0
        run = label[mask]
        if run.size >= min_fraction * label.size:
            found.append((_PALETTE_NAMES[np.bincount(run).argmax()], mask))
    return found


def object_colours(image: np.ndarray | Image.Image, min_fraction: float = 0.004,
                   max_distance: float = PALETTE_DISTANCE) -> list[str]:
    """Colour of each object in an image, left to right (a pixel oracle for generated images), from
    `object_runs`. Exact on rendered images at 32 px and up; on generated images a tolerant check.
    """
    return [colour for colour, _ in object_runs(image, min_fraction, max_distance)]


def colour_match(image: np.ndarray | Image.Image, scene: Scene) -> dict[str, float]:
    """Oracle scores of an image against a scene, from `object_colours`.

    count: the image shows as many objects as the scene; colour: share of the scene's objects
    whose colour is right at the same left-to-right position; exact: all of them are.
    """
    found = object_colours(image)
    wanted = [o.colour for o in scene.objects]
    hits = sum(f == w for f, w in zip(found, wanted))
    return dict(count=float(len(found) == len(wanted)), colour=hits / len(wanted), exact=float(found == wanted))


# ----------------------------------------------------------------------------- dataset


# What each split holds, for a reader of its scores (eval.py's summary and report).
SPLIT_CONTENTS = {
    "train": "seen compositions (no held-out colour-kind pair)",
    "val": "seen compositions (no held-out colour-kind pair), items disjoint from train",
    "test": "held-out compositions: every scene has a colour-kind pair never seen in train or val, so "
            "a captioner that names only seen pairs scores caption exact 0 here",
}


class SyntheticCaptions(Dataset):
    """`size` items of one split of the shapes benchmark, as raw samples.

    Sample: {"id": "<split>-<i>", "image": PIL RGB (image_size x image_size),
    "caption": one reference chosen from (seed, i, epoch), or with readings="left_of" always the
    left-to-right one (the zoo's models were pretrained on it), "references": all readings}.
    Keys may be an int (epoch 0) or a SampleKey(index, epoch).

    drop_attributes = p leaves each size and colour word out of every reference with probability p
    (fixed per item): references that omit details, as COCO's do, for training. Scores are always
    against the complete scene.
    """

    def __init__(self, split: str = "train", size: int = 1000, seed: int = 0, image_size: int = 64,
                 readings: str = "all", drop_attributes: float = 0.0):
        if split not in SPLIT_IDS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_IDS)}")
        if size < 0 or image_size < 8:
            raise ValueError(f"need size >= 0 and image_size >= 8, got {size} and {image_size}")
        if readings not in READINGS:
            raise ValueError(f"readings: expected one of {READINGS}, got {readings!r}")
        self.split, self.size, self.seed, self.image_size = split, size, seed, image_size
        self.readings = readings
        if not 0.0 <= drop_attributes <= 1.0:
            raise ValueError(f"drop_attributes: expected a probability in [0, 1], got {drop_attributes}")
        self.drop_attributes = float(drop_attributes)
        self.bad_at_index: list[tuple[str, str]] = []  # generated data has none

    def __len__(self) -> int:
        return self.size

    @property
    def contents(self) -> str:
        return SPLIT_CONTENTS[self.split]

    @property
    def num_bad_at_index(self) -> int:
        return 0

    def scene(self, index: int) -> Scene:
        """The scene of item `index`, without rendering it."""
        return sample_scene(item_rng(self.seed, self.split, self._check(index)), self.split)

    def _check(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} {self.split} items")
        return index

    def __getitem__(self, key: Any) -> dict[str, Any]:
        index, epoch = unpack_key(key)
        scene, pixels = generate(self.seed, self.split, self._check(index), self.image_size)
        references = captions(scene)
        if self.drop_attributes:
            # Which words a reference omits is fixed per item (its own stream, not the scene's), the
            # same every epoch, as a dataset's references are.
            rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index, DROP_STREAM])
            references = [drop_attributes(r, self.drop_attributes, rng) for r in references]
        return {
            "id": f"{self.split}-{index}",
            "image": Image.fromarray(pixels),
            "caption": references[0] if self.readings == "left_of"
            else pick_reference(references, self.seed, index, epoch),
            "references": references,
        }
