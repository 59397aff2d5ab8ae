"""Scenes that differ from a given one in one attribute: the hard negatives the zoo's CLIP trains
on (recon_ft.zoo.clip) and the alternatives its check ranks the truth against (recon_ft.zoo.clip_check)."""

from __future__ import annotations

import dataclasses

import torch

from recon_ft.data.synthetic import COLOURS, KINDS, MAX_OBJECTS, SIZES, Scene, Shape


def pick(options, rng: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=rng))]


def random_shape(rng: torch.Generator) -> Shape:
    return Shape(kind=pick(KINDS, rng), colour=pick(list(COLOURS), rng), size=pick(SIZES, rng))


def perturb(scene: Scene, attribute: str, rng: torch.Generator) -> Scene:
    """`scene` with one attribute changed: one object's colour / kind / size to another value, or
    the count (one object added at a random place, or one removed)."""
    objects = list(scene.objects)
    if attribute == "count":
        if len(objects) == MAX_OBJECTS or (len(objects) > 1 and int(torch.randint(2, (1,), generator=rng))):
            del objects[int(torch.randint(len(objects), (1,), generator=rng))]
        else:
            objects.insert(int(torch.randint(len(objects) + 1, (1,), generator=rng)), random_shape(rng))
        return Scene(tuple(objects))
    values = {"colour": list(COLOURS), "kind": list(KINDS), "size": list(SIZES)}[attribute]
    i = int(torch.randint(len(objects), (1,), generator=rng))
    old = getattr(objects[i], attribute)
    objects[i] = dataclasses.replace(objects[i], **{attribute: pick([v for v in values if v != old], rng)})
    return Scene(tuple(objects))


def variants(scene: Scene, attribute: str, rng: torch.Generator) -> list[Scene]:
    """The scenes that differ from `scene` in `attribute` only (one object's colour, kind or size set to each other value; count: each object removed, one random object added)."""
    objects = list(scene.objects)
    if attribute == "count":
        out = []
        if len(objects) > 1:  # one object removed
            drop = int(torch.randint(len(objects), (1,), generator=rng))
            out.append(Scene(tuple(o for j, o in enumerate(objects) if j != drop)))
        if len(objects) < MAX_OBJECTS:  # one object added
            at = int(torch.randint(len(objects) + 1, (1,), generator=rng))
            out.append(Scene(tuple(objects[:at] + [random_shape(rng)] + objects[at:])))
        return out
    values = {"colour": list(COLOURS), "kind": list(KINDS), "size": list(SIZES)}[attribute]
    i = int(torch.randint(len(objects), (1,), generator=rng))
    return [Scene(tuple(dataclasses.replace(o, **{attribute: v}) if j == i else o for j, o in enumerate(objects)))
            for v in values if v != getattr(objects[i], attribute)]
