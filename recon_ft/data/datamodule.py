"""Raw samples -> batches: image views, bad-sample handling, sharded loaders, resume.

Datasets (synthetic, Karpathy, NoCaps, jsonl, or any Dataset following the same contract)
return RAW samples:
    {"id": str | int, "image": PIL RGB image or a path opened lazily here, "caption": str
     (the reference chosen for this epoch), "references": list[str], "domain": str (optional)}
`ViewDataset` turns one into {"id", "image_cap": (3, Hc, Wc), "image_gen": (3, Hg, Wg) in
[-1, 1], "caption", "references", ["domain"]} or, for a bad sample with on_bad_sample="skip",
None (the training set: a `BadSample` naming its position); `CaptionCollate` stacks the good ones
and counts the rest in "n_bad" (positions of the `BadSample`s in "bad_index").

Unpaired images and texts (recon_ft/data/unpaired.py) join the training batches when
`unpaired.images` / `unpaired.texts` are given (recon_ft/data/mixing.py says which items each batch
draws): `UnpairedView` gives each image its two views, and the batch holds them apart from the
paired rows, as "unpaired_images" and "unpaired_texts".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lightning import LightningDataModule
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset

from recon_ft.constants import CLIP_MEAN, CLIP_STD
from recon_ft.data.mixing import STREAMS, MixedBatchSampler, MixedDataset, StreamKey, UnpairedStream
from recon_ft.data.sampler import EvalShardSampler, ResumableSampler, unpack_key
from recon_ft.data.transforms import CaptionerView, GeneratorView, as_hw
from recon_ft.data.unpaired import UnpairedImages, UnpairedTexts

log = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("skip", "raise")


class BadSampleError(ValueError):
    """A sample that cannot be used; `source` names the file (or item), `reason` what is wrong."""

    def __init__(self, source: str, reason: str | None = None):
        if reason is None:  # re-raised from a DataLoader worker: one message holding its traceback
            source, reason = _from_worker(source)
        super().__init__(f"{source}: {reason}")
        self.source, self.reason = source, reason


def _from_worker(message: str) -> tuple[str, str]:
    """(source, reason) out of the message a DataLoader worker's error arrives with in the main
    process ("Caught BadSampleError in DataLoader worker process 0. Original Traceback ...",
    whose last line is "...BadSampleError: <source>: <reason>"), so the user sees one line."""
    last = message.rstrip().splitlines()[-1] if message.strip() else message
    text = last.split("BadSampleError: ", 1)[-1]
    source, _, reason = text.partition(": ")  # a reason may hold ": " too
    return (source, reason) if reason else (text, "bad sample")


class BadSample(NamedTuple):
    """What the training set's ViewDataset returns for a bad sample: its position in the dataset,
    so a bad item drawn in several epochs is counted once."""

    index: int


class BadUnpaired(NamedTuple):
    """A bad item of an unpaired stream: the stream and the item's position, counted once."""

    stream: str
    index: int


def load_image(image: Image.Image | str | Path) -> Image.Image:
    """A PIL RGB image, from an image or a path; BadSampleError naming the file if it cannot be read."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = str(image)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now: a truncated file fails here, not later in a transform
            return opened.convert("RGB")
    except FileNotFoundError:
        raise BadSampleError(path, "image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadSampleError(path, f"unreadable or corrupt image ({type(err).__name__}: {err})") from None


def truncate_words(text: str, max_words: int | None) -> str:
    """Whitespace-normalized text, cut to its first `max_words` words (None: no limit)."""
    words = text.split()
    return " ".join(words if max_words is None else words[:max_words])


class ViewDataset(Dataset):
    """Wraps a raw-sample dataset: loads the image, makes both views, handles bad samples.

    on_bad_sample="skip": a missing / unreadable / corrupt image or an empty caption gives None
    (with mark_bad, BadSample(index); dropped by CaptionCollate) and one warning per file and
    process; "raise": BadSampleError naming the file. The captioner view's augmentation is drawn
    from (seed, index, epoch), so a resumed run sees the same views as an uninterrupted one. The training target `caption` is cut to `max_words` words, as the
    reference implementation does; `references` are kept whole, for metrics.
    """

    def __init__(self, dataset: Dataset, caption_view: CaptionerView, generator_view: GeneratorView,
                 on_bad_sample: str = "skip", max_words: int | None = 30, seed: int = 0, mark_bad: bool = False):
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        self.dataset, self.caption_view, self.generator_view = dataset, caption_view, generator_view
        self.on_bad_sample, self.max_words = on_bad_sample, max_words
        self.seed = seed  # with the key's (epoch, index): the augmentation's draw
        self.mark_bad = mark_bad  # a bad sample gives BadSample(index) instead of None
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def _bad(self, key: Any, source: str, reason: str) -> BadSample | None:
        if self.on_bad_sample == "raise":
            raise BadSampleError(source, reason)
        if source not in self._warned:
            self._warned.add(source)
            log.warning("skipping bad sample %s: %s", source, reason)
        return BadSample(unpack_key(key)[0]) if self.mark_bad else None

    def __getitem__(self, key: Any) -> dict[str, Any] | BadSample | None:
        try:
            raw = self.dataset[key]
        except BadSampleError as err:
            return self._bad(key, err.source, err.reason)
        except OSError as err:  # a dataset that reads files itself
            return self._bad(key, f"item {unpack_key(key)[0]}", f"{type(err).__name__}: {err}")
        image = raw["image"]
        source = image if isinstance(image, (str, Path)) else f"item {raw.get('id')}"
        caption = truncate_words(str(raw.get("caption") or ""), self.max_words)
        if not caption:
            return self._bad(key, str(source), "empty caption")
        try:
            image = load_image(image)
        except BadSampleError as err:
            return self._bad(key, err.source, err.reason)
        sample = {
            "id": raw["id"],
            "image_cap": self.caption_view(image, draw=(self.seed, *unpack_key(key))),  # (3, Hc, Wc)
            "image_gen": self.generator_view(image),  # (3, Hg, Wg), [-1, 1]
            "caption": caption,
            "references": list(raw.get("references") or [caption]),
        }
        if "domain" in raw:
            sample["domain"] = raw["domain"]
        return sample


class UnpairedView(Dataset):
    """An unpaired stream's dataset keyed by `StreamKey`: an image gets both views (the captioner's
    without augmentation: the image cycle compares the caption with the image the generator
    denoises, which a crop or flip would contradict), a text stays a string. An unreadable image
    gives `BadUnpaired` (on_bad_sample="skip", one warning per file) or raises BadSampleError."""

    def __init__(self, dataset: Dataset, stream: str, caption_view: CaptionerView | None = None,
                 generator_view: GeneratorView | None = None, on_bad_sample: str = "skip"):
        self.dataset, self.stream = dataset, stream
        self.caption_view, self.generator_view, self.on_bad_sample = caption_view, generator_view, on_bad_sample
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: StreamKey) -> dict[str, Any] | BadUnpaired:
        raw = self.dataset[key.index]
        if self.stream == "texts":
            return {"stream": "texts", "index": key.index, "id": raw["id"], "text": raw["text"]}
        try:
            image = load_image(raw["image"])
        except BadSampleError as err:
            if self.on_bad_sample == "raise":
                raise
            if err.source not in self._warned:
                self._warned.add(err.source)
                log.warning("skipping bad unpaired image %s: %s", err.source, err.reason)
            return BadUnpaired(self.stream, key.index)
        sample = {"stream": "images", "index": key.index, "id": raw["id"],
                  "image_cap": self.caption_view(image), "image_gen": self.generator_view(image)}
        if "truth" in raw:  # a synthetic stream's true caption (the oracle arm's target)
            sample["truth"] = raw["truth"]
        return sample


def _unpaired(sample) -> bool:
    return isinstance(sample, BadUnpaired) or (isinstance(sample, dict) and "stream" in sample)


class CaptionCollate:
    """List of samples or None -> batch; Nones are dropped and counted in "n_bad".

    Batch: {"image_cap": (B, 3, Hc, Wc), "image_gen": (B, 3, Hg, Wg), "caption": list[str],
    "references": list[list[str]], "id": list, "domain": list[str] (if any sample has one),
    "n_bad": int}. B may be 0 when every sample was bad; the tensors then still have their
    shape's trailing dims, and the training step should skip the batch.

    With unpaired streams, also "unpaired_images": {"image_cap": (Bi, 3, Hc, Wc), "image_gen":
    (Bi, 3, Hg, Wg), "id": list, "truth": list[str] when the stream knows its true captions} when the
    batch drew images, "unpaired_texts": list[str] when it drew
    texts, and "bad_unpaired": [(stream, index)] of the items left out.
    """

    def __init__(self, caption_size: int | tuple[int, int], generator_size: int | tuple[int, int]):
        self.caption_size, self.generator_size = as_hw(caption_size), as_hw(generator_size)

    def __call__(self, samples: list[dict[str, Any] | BadSample | BadUnpaired | None]) -> dict[str, Any]:
        unpaired = [s for s in samples if _unpaired(s)]
        samples = [s for s in samples if not _unpaired(s)]
        good = [s for s in samples if isinstance(s, dict)]
        batch: dict[str, Any] = {
            "image_cap": torch.stack([s["image_cap"] for s in good]) if good
            else torch.empty(0, 3, *self.caption_size),
            "image_gen": torch.stack([s["image_gen"] for s in good]) if good
            else torch.empty(0, 3, *self.generator_size),
            "caption": [s["caption"] for s in good],
            "references": [s["references"] for s in good],
            "id": [s["id"] for s in good],
            "n_bad": len(samples) - len(good),
            "bad_index": [s.index for s in samples if isinstance(s, BadSample)],
        }
        if any("domain" in s for s in good):
            batch["domain"] = [s.get("domain", "") for s in good]
        if unpaired:
            batch.update(self._unpaired_rows(unpaired))
        return batch

    def _unpaired_rows(self, samples: list) -> dict[str, Any]:
        rows: dict[str, Any] = {"bad_unpaired": [tuple(s) for s in samples if isinstance(s, BadUnpaired)]}
        images = [s for s in samples if isinstance(s, dict) and s["stream"] == "images"]
        if images or any(s.stream == "images" for s in samples if isinstance(s, BadUnpaired)):
            rows["unpaired_images"] = {
                "image_cap": torch.stack([s["image_cap"] for s in images]) if images
                else torch.empty(0, 3, *self.caption_size),
                "image_gen": torch.stack([s["image_gen"] for s in images]) if images
                else torch.empty(0, 3, *self.generator_size),
                "id": [s["id"] for s in images],
            }
            if images and all("truth" in s for s in images):
                rows["unpaired_images"]["truth"] = [s["truth"] for s in images]
        texts = [s["text"] for s in samples if isinstance(s, dict) and s["stream"] == "texts"]
        if texts:
            rows["unpaired_texts"] = texts
        return rows


class _EpochBatchSampler(BatchSampler):
    """BatchSampler whose len is the whole epoch's batch count, also while resuming mid-epoch.

    Lightning measures an epoch once (len of the loader) and, on resume, counts the batches
    already done before the checkpoint; the loader must therefore report the whole epoch while it
    yields only the remaining batches (as a resumable StatefulDataLoader does).
    """

    sampler: ResumableSampler

    def __len__(self) -> int:
        n = self.sampler.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class CaptionDataModule(LightningDataModule):
    """Train / val / test loaders over raw-sample datasets built elsewhere (Hydra).

    caption_view: {size, mean, std, augment ("none" | "blip", used for training only)};
    generator_view: {size}. Train: ResumableSampler (shuffled, sharded over ranks, padded like
    DistributedSampler), so run the trainer with use_distributed_sampler=False. Val / test:
    EvalShardSampler (sequential, each item once over all ranks, no padding).

    Mid-epoch resume is automatic under Lightning: state_dict() records the epoch and the
    batches done, load_state_dict() + train_dataloader() skip them; skip_train_batches(n) does
    the same by hand.
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 batch_size: int = 8, eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 on_bad_sample: str = "skip", caption_view: Mapping[str, Any] | None = None,
                 generator_view: Mapping[str, Any] | None = None, max_words: int | None = 30,
                 pin_memory: bool = False, unpaired: Mapping[str, Any] | None = None):
        super().__init__()
        if on_bad_sample not in ON_BAD_SAMPLE:
            raise ValueError(f"on_bad_sample must be one of {ON_BAD_SAMPLE}, got {on_bad_sample!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.datasets = {"train": train, "val": val, "test": test}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.seed, self.pin_memory = num_workers, seed, pin_memory
        self.on_bad_sample, self.max_words = on_bad_sample, max_words
        cap = dict(caption_view or {})
        cap_args = dict(size=cap.pop("size", 384), mean=cap.pop("mean", CLIP_MEAN), std=cap.pop("std", CLIP_STD))
        augment = cap.pop("augment", "none")
        gen = dict(generator_view or {})
        gen_size = gen.pop("size", 512)
        if cap or gen:
            raise ValueError(f"unknown view options: caption_view {sorted(cap)}, generator_view {sorted(gen)}")
        self.train_caption_view = CaptionerView(**cap_args, augment=augment)
        self.eval_caption_view = CaptionerView(**cap_args, augment="none")
        self.generator_view = GeneratorView(gen_size)
        self.collate = CaptionCollate(self.train_caption_view.size, self.generator_view.size)
        self.train_sampler = ResumableSampler(len(train), seed=seed, shuffle=True) if train is not None else None
        self._resume: dict[str, int] | None = None  # from load_state_dict, used once
        self._wrapped: dict[str, ViewDataset] = {}
        # per split: samples its dataset left out at indexing (e.g. empty captions)
        self.unpaired = unpaired_datasets(unpaired)  # stream -> dataset
        self.streams = [UnpairedStream(name, len(ds), int((unpaired or {}).get("batch_size") or batch_size),
                                       int((unpaired or {}).get("every_n_steps") or 1), seed)
                        for name, ds in self.unpaired.items()]
        # per split (and unpaired stream): samples its dataset left out at indexing (e.g. empty captions)
        self.num_bad_at_index = {split: int(getattr(ds, "num_bad_at_index", 0))
                                 for split, ds in self.datasets.items() if ds is not None}
        self.num_bad_at_index.update({f"unpaired_{name}": int(getattr(ds, "num_bad_at_index", 0))
                                      for name, ds in self.unpaired.items()})

    # ------------------------------------------------------------------ datasets

    def setup(self, stage: str | None = None) -> None:
        for split, dataset in self.datasets.items():
            if dataset is not None:
                self._view_dataset(split)

    def _view_dataset(self, split: str) -> ViewDataset:
        if split in self._wrapped:
            return self._wrapped[split]
        dataset = self.datasets[split]
        if dataset is None:
            raise ValueError(f"CaptionDataModule has no {split} dataset")
        bad = list(getattr(dataset, "bad_at_index", []))
        if bad and self.on_bad_sample == "raise":
            raise BadSampleError(*bad[0])
        if bad:
            log.warning("%s data: %d samples left out when indexing (first: %s: %s)", split, len(bad), *bad[0])
        view = self.train_caption_view if split == "train" else self.eval_caption_view
        self._wrapped[split] = ViewDataset(dataset, view, self.generator_view, self.on_bad_sample, self.max_words,
                                           seed=self.seed, mark_bad=split == "train")
        return self._wrapped[split]

    # ------------------------------------------------------------------ loaders

    def _loader(self, split: str, batch_sampler: BatchSampler, dataset: Dataset | None = None) -> DataLoader:
        return DataLoader(dataset or self._view_dataset(split), batch_sampler=batch_sampler, collate_fn=self.collate,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        if self.train_sampler is None:
            raise ValueError("CaptionDataModule has no train dataset")
        batches = _EpochBatchSampler(self.train_sampler, self.batch_size, drop_last=False)
        if self.trainer is not None:
            if self._resume is not None:
                self._check_unpaired_resume(self._resume)
            # Lightning creates (and prefetches from) this loader's iterator before its first
            # set_epoch call of a run, so a resumed run must get the right epoch (and skip) here.
            epoch, skip = self.trainer.current_epoch, 0
            if self._resume is not None:
                epoch, skip = self._resume["epoch"], self._resume["batches_done"]
                if skip >= len(batches):  # the checkpoint closed its epoch: start the next one
                    epoch, skip = epoch + 1, 0
                self._resume = None
            self.train_sampler.set_epoch(epoch)
            self.skip_train_batches(skip)
        if not self.streams:
            return self._loader("train", batches)
        for name, ds in self.unpaired.items():
            bad = list(getattr(ds, "bad_at_index", []))
            if bad and self.on_bad_sample == "raise":
                raise BadSampleError(*bad[0])
        dataset = MixedDataset(self._view_dataset("train"), {
            name: UnpairedView(ds, name, self.eval_caption_view, self.generator_view, self.on_bad_sample)
            for name, ds in self.unpaired.items()})
        return self._loader("train", MixedBatchSampler(batches, self.streams), dataset)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> DataLoader:
        sampler = EvalShardSampler(len(self._view_dataset(split)))
        return self._loader(split, BatchSampler(sampler, self.eval_batch_size, drop_last=False))

    # ------------------------------------------------------------------ resume

    def skip_train_batches(self, n: int) -> None:
        """The next training iteration starts after its first n batches of this rank's shard."""
        if self.train_sampler is None:
            raise ValueError("CaptionDataModule has no train dataset")
        self.train_sampler.skip(n * self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        if self.trainer is None or self.train_sampler is None:
            return {}
        # current_epoch is the epoch in progress (it only advances once an epoch has closed);
        # `ready` counts its batches fetched so far, all of them when saved at its end.
        epoch = self.trainer.current_epoch
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.ready
        state: dict[str, Any] = {"epoch": epoch, "batches_done": done}
        if self.streams:
            # Each stream's position follows from the batch count; kept with its dataset's size, so
            # a resume on other unpaired data is refused rather than silently drawing other items.
            batches_per_epoch = len(_EpochBatchSampler(self.train_sampler, self.batch_size, drop_last=False))
            state["unpaired"] = {s.name: {"drawn": s.draws_before(epoch * batches_per_epoch + done),
                                          "size": s.data_len} for s in self.streams}
        return state

    def _check_unpaired_resume(self, state: dict[str, Any]) -> None:
        saved = {name: int(v["size"]) for name, v in (state.get("unpaired") or {}).items()}
        now = {s.name: s.data_len for s in self.streams}
        if saved != now:
            raise ValueError(
                f"resume: the checkpoint's run drew from unpaired streams of sizes {saved or 'none'}, this run has "
                f"{now or 'none'}; resume with the same data.unpaired.images / data.unpaired.texts")

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = dict(state_dict) if state_dict else None


def unpaired_datasets(spec: Mapping[str, Any] | None) -> dict[str, Dataset]:
    """`data.unpaired`'s streams: {"images": Dataset, "texts": Dataset}, for those given. A string is
    a path (UnpairedImages: a folder, glob or Karpathy json; UnpairedTexts: a .txt / .jsonl file,
    lines over `max_words` words left out); a Dataset (e.g. instantiated by Hydra) is used as is."""
    spec = dict(spec or {})
    unknown = sorted(set(spec) - {*STREAMS, "batch_size", "every_n_steps", "max_words"})
    if unknown:
        raise ValueError(f"data.unpaired: unknown options {unknown}; expected images, texts, batch_size, "
                         "every_n_steps, max_words")
    out: dict[str, Dataset] = {}
    if spec.get("images") is not None:
        images = spec["images"]
        out["images"] = UnpairedImages(images) if isinstance(images, (str, Path)) else images
    if spec.get("texts") is not None:
        texts = spec["texts"]
        out["texts"] = UnpairedTexts(texts, spec.get("max_words", 30)) if isinstance(texts, (str, Path)) else texts
    return out
