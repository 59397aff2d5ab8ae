"""The pixel oracle for generated images of the shapes benchmark: each object's colour, kind and size.

`object_runs` (synthetic.py) finds the objects left to right and their colours. Here each object's
mask is matched against the masks render() would draw: for every (kind, size) the template of
that kind at that size's radius, slid over sub-pixel centres around the object's centroid; the
(kind, size) whose best placement overlaps the mask most (intersection over union) wins. On
rendered images the true template reproduces the mask up to pixel rounding; on generated images
the best-overlapping one is a tolerant reading. A generator trained on renderings drawn at twice
its size and resized (the zoo's) draws blended edges, where a star's thin points fade below what
object_runs counts; so each template is also tried drawn at twice the size and resized the same
way, its pixels kept where the shape covers enough of them for object_runs to count. The
left-to-right order needs no reading of its own: every per-object score compares objects at the
same left-to-right position, so an image with the right shapes in the wrong order scores as wrong.

`validate_oracle` measures the oracle on rendered ground truth, where the answer is known: an
attribute is worth reporting for generated images only if the oracle reads it from real
renderings nearly always (VALIDATED_ACCURACY).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from recon_ft.data.synthetic import (
    _SIZE_SCALE,
    BACKGROUND,
    COLOURS,
    KINDS,
    MAX_OBJECTS,
    PALETTE_DISTANCE,
    SIZES,
    Scene,
    generate,
    object_runs,
    shape_mask,
)

# An attribute's oracle accuracy on rendered ground truth must reach this to be reported.
VALIDATED_ACCURACY = 0.95
ATTRIBUTES = ("count", "colour", "kind", "size", "exact", "scene_exact", "kind_large")

# The centroid of each kind's mask relative to its centre, in units of r (x, y): the triangle
# (apex up at cy - r, base at cy + r) has its centroid a third of r below the centre; the other
# shapes are symmetric about it.
_CENTROID_OFFSET = {"circle": (0.0, 0.0), "square": (0.0, 0.0), "triangle": (0.0, 1 / 3), "star": (0.0, 0.0)}
# Sub-pixel centres tried around the centroid-implied centre: +-1 px in steps of 0.25 px (9 x 9).
_SEARCH = np.linspace(-1.0, 1.0, 9)


@dataclass(frozen=True)
class SeenObject:
    colour: str
    kind: str
    size: str
    iou: float  # overlap of the mask with the best template, 1.0 at most


def radius(size: str, image_size: int) -> float:
    """render()'s extent radius of an object of `size` in an image `image_size` pixels wide."""
    return _SIZE_SCALE[size] * image_size / MAX_OBJECTS / 2


def coverage_threshold(colour: str) -> float:
    """The share of a pixel an object must cover for object_runs to count it, where an edge pixel
    blends the object's colour with the background (a resized image): the blend is nearer the colour
    than the background (> 0.5) and within object_runs' max_distance of it."""
    contrast = float(np.linalg.norm(np.subtract(COLOURS[colour], BACKGROUND, dtype=np.float32)))
    return max(0.5, 1.0 - PALETTE_DISTANCE / contrast)


def _resized_templates(kind: str, r2: float, xs2: np.ndarray, ys2: np.ndarray, cx2: np.ndarray, cy2: np.ndarray,
                       out_hw: tuple[int, int], threshold: float) -> np.ndarray:
    """Masks (9, 9, h, w) of a shape drawn at twice the size (pixel-centre grid xs2, ys2 of the
    window, centres cx2 x cy2) and resized to half as the generator's training images are
    (`resized`), a pixel kept where the shape covers at least `threshold` of it."""
    import torch
    import torch.nn.functional as F

    dx, dy = np.broadcast_arrays(xs2 - cx2, ys2 - cy2)  # (9, 9, 2h, 2w) each
    drawn = torch.from_numpy(shape_mask(kind, dx, dy, 0.0, 0.0, r2).astype(np.float32))
    flat = drawn.reshape(-1, 1, *drawn.shape[-2:])  # (81, 1, 2h, 2w)
    coverage = F.interpolate(flat, size=out_hw, mode="bilinear", antialias=True)  # (81, 1, h, w)
    return (coverage.reshape(*drawn.shape[:2], *out_hw) >= threshold).numpy()


def read_shape(mask: np.ndarray, threshold: float | None = None) -> tuple[str, str, float]:
    """(kind, size, IoU) of the template that best matches a boolean (H, W) object mask.

    With `threshold` (coverage_threshold of the object's colour) each template is also tried as
    a generator trained on resized renderings draws it: at twice the size, resized to half, edge
    pixels kept where covered enough. Thin parts (a star's points) fade there, and a template
    without them would misread the shape."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    margin = math.ceil(radius("large", width)) + 2
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, height)
    left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, width)
    window = mask[top:bottom, left:right]  # (h, w)
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float32) + 0.5  # pixel centres
    my, mx = ys[window].mean(), xs[window].mean()
    if threshold is not None:  # the window's pixel centres at twice the size, (2h, 2w) each
        ys2, xs2 = np.mgrid[2 * top:2 * bottom, 2 * left:2 * right].astype(np.float32) + 0.5
    best = ("", "", -1.0)
    for kind in KINDS:
        ox, oy = _CENTROID_OFFSET[kind]
        for size in SIZES:
            r = radius(size, width)
            cx = (mx - ox * r + _SEARCH)[:, None, None, None]  # (9, 1, 1, 1)
            cy = (my - oy * r + _SEARCH)[None, :, None, None]  # (1, 9, 1, 1)
            # shape_mask is translation invariant: the template at the origin of shifted grids
            dx, dy = np.broadcast_arrays(xs - cx, ys - cy)  # (9, 9, h, w) each
            views = [shape_mask(kind, dx, dy, 0.0, 0.0, r)]
            if threshold is not None:
                views.append(_resized_templates(kind, 2 * r, xs2, ys2, 2 * cx, 2 * cy, window.shape, threshold))
            for templates in views:
                inter = (templates & window).sum((-2, -1))
                union = (templates | window).sum((-2, -1))
                iou = float((inter / np.maximum(union, 1)).max())
                if iou > best[2]:
                    best = (kind, size, iou)
    return best


def read_objects(image: np.ndarray | Image.Image) -> list[SeenObject]:
    """Every object of an image, left to right, with its colour, kind and size."""
    return [SeenObject(colour, *read_shape(mask, coverage_threshold(colour))) for colour, mask in object_runs(image)]


def scene_match(image: np.ndarray | Image.Image, scene: Scene) -> dict[str, float | None]:
    """Oracle scores of an image against a scene (all in [0, 1]).

    count: as many objects as the scene; colour / kind / size: share of the scene's objects whose
    attribute is right at the same left-to-right position; exact: every colour right in order (the
    meaning of `colour_match`'s exact); scene_exact: every colour, kind and size right in order;
    kind_large: share of the scene's large objects whose kind is read at their position, the count
    right (kind_accuracy_by_size's rule; large shapes are where the oracle reads kind in every view),
    None when the scene has no large object.
    """
    seen = read_objects(image)
    wanted = scene.objects
    n = len(wanted)
    hits = {attr: sum(getattr(s, attr) == getattr(w, attr) for s, w in zip(seen, wanted)) / n
            for attr in ("colour", "kind", "size")}
    same_count = len(seen) == n
    return dict(
        count=float(same_count),
        **hits,
        exact=float(same_count and [s.colour for s in seen] == [w.colour for w in wanted]),
        scene_exact=float(same_count and all(
            (s.colour, s.kind, s.size) == (w.colour, w.kind, w.size) for s, w in zip(seen, wanted))),
        kind_large=_kind_of_large(seen, wanted),
    )


def kinds_read(seen: list[SeenObject], wanted) -> list[bool]:
    """Per wanted object: its kind read at its left-to-right position, the scene's number of
    objects found (scene_match's kind_large and kind_accuracy_by_size share this rule)."""
    counted = len(seen) == len(wanted)
    return [counted and seen[k].kind == w.kind for k, w in enumerate(wanted)]


def _kind_of_large(seen: list[SeenObject], wanted) -> float | None:
    large = [read for read, w in zip(kinds_read(seen, wanted), wanted) if w.size == "large"]
    return sum(large) / len(large) if large else None


def resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """(S, S, 3) uint8 -> (size, size, 3) uint8, resized as the zoo's generator sees its training
    images (bilinear, antialiased: recon_ft.zoo.data.to_unit_range), so edges blend colours."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()  # (1, 3, S, S)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def rendered_items(split: str, n: int, image_size: int, seed: int = 0, render_size: int | None = None):
    """(scene, pixels) of a split's first `n` items, rendered at `render_size` (default: image_size)
    and resized to `image_size` as a generator's training images are."""
    render_size = render_size or image_size
    for i in range(n):
        scene, pixels = generate(seed, split, i, render_size)
        yield scene, pixels if render_size == image_size else resized(pixels, image_size)


def validate_oracle(split: str = "test", n: int = 256, image_size: int = 32, seed: int = 0,
                    render_size: int | None = None) -> dict:
    """The oracle's accuracy per attribute on the first `n` rendered ground-truth items of a split.

    `render_size`: render at this size and resize to `image_size` (what a generator trained on
    resized renderings learns to draw, blended edges included); None: render at `image_size`.
    Returns {"split", "n", "image_size", "render_size", "accuracy": {attribute: mean of scene_match},
    "validated": [attributes with accuracy >= VALIDATED_ACCURACY]}.
    """
    if n < 1 or image_size < 8:
        raise ValueError(f"validate_oracle: need n >= 1 and image_size >= 8, got {n} and {image_size}")
    render_size = render_size or image_size
    values: dict[str, list[float]] = {attr: [] for attr in ATTRIBUTES}
    for scene, pixels in rendered_items(split, n, image_size, seed, render_size):
        for attr, value in scene_match(pixels, scene).items():
            if value is not None:  # kind_large of a scene without large objects
                values[attr].append(value)
    accuracy = {attr: float(np.mean(v)) if v else float("nan") for attr, v in values.items()}
    return {"split": split, "n": n, "image_size": image_size, "render_size": render_size, "accuracy": accuracy,
            "validated": [a for a in ATTRIBUTES if accuracy[a] >= VALIDATED_ACCURACY]}


def kind_accuracy_by_size(split: str = "val", n: int = 512, image_size: int = 32, seed: int = 0,
                          render_size: int | None = None) -> dict:
    """The oracle's kind accuracy per true object size on the first `n` rendered items of a split:
    {size: {"accuracy", "objects"}}, an object counting as read when the oracle finds the scene's
    number of objects and this one's kind at its position. A generated image's kind can be scored
    only for the sizes where this reaches VALIDATED_ACCURACY in every view the generator learns from
    (docs/study/plan.md, E3)."""
    hits: dict[str, int] = {}
    objects: dict[str, int] = {}
    for scene, pixels in rendered_items(split, n, image_size, seed, render_size):
        for read, want in zip(kinds_read(read_objects(pixels), scene.objects), scene.objects):
            objects[want.size] = objects.get(want.size, 0) + 1
            hits[want.size] = hits.get(want.size, 0) + int(read)
    return {size: {"accuracy": hits[size] / objects[size], "objects": objects[size]} for size in sorted(objects)}
