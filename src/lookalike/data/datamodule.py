"""The Lightning DataModule: PK batches for training, plain loaders for validation and test."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from lookalike.config import build
from lookalike.data.cache import resized_splits
from lookalike.data.feedback import held_out_photos, read_feedback, with_feedback
from lookalike.data.images import ImageDataset, unreadable_images
from lookalike.data.samplers import HardPairBatches
from lookalike.data.table import ImageTable, Splits, role_arguments, split_off_classes
from lookalike.data.transforms import eval_resize, eval_transform, train_transform
from lookalike.errors import LookalikeError


log = logging.getLogger(__name__)
BAD_IMAGE_POLICIES = ("skip", "error")


def without_unreadable(splits: Splits, policy: str = "skip") -> Splits:
    """The splits without images that cannot be decoded: left out with one warning each and a count
    (``skip``), or a LookalikeError listing them (``error``)."""
    if policy not in BAD_IMAGE_POLICIES:
        raise LookalikeError(f"data.on_bad_image={policy!r}: choose one of {BAD_IMAGE_POLICIES}")
    tables = [t for t in (splits.train, splits.val, splits.test) if t is not None]
    bad = unreadable_images([p for t in tables for p in t.paths])
    if not bad:
        return splits
    listing = "\n".join(f"  {p}: {e}" for p, e in list(bad.items())[:20]) + ("\n  ..." if len(bad) > 20 else "")
    if policy == "error":
        raise LookalikeError(f"{len(bad)} image(s) cannot be read (fix or remove them, or set "
                             f"data.on_bad_image=skip to leave them out):\n{listing}")
    for path, problem in bad.items():
        log.warning("skipping unreadable image %s (%s)", path, problem)
    log.warning("skipped %d unreadable image(s) of %d", len(bad), sum(len(t) for t in tables))

    def keep(table: ImageTable | None) -> ImageTable | None:
        return None if table is None else table.subset(np.array([p not in bad for p in table.paths], bool))

    return Splits(train=keep(splits.train), test=keep(splits.test), val=keep(splits.val))


def trainable(table: ImageTable, instances: bool = False) -> ImageTable:
    """The training table without duplicate paths and, unless each image is its own class
    (``instances``), without classes of one image (they cannot form a positive pair), with a warning
    for each kind of row left out."""
    first = np.zeros(len(table), bool)
    first[np.unique(np.asarray(table.paths), return_index=True)[1]] = True
    if not first.all():
        log.warning("left out %d duplicate path(s) of the training set", int((~first).sum()))
        table = table.subset(first)
    if instances:
        return table
    classes, counts = np.unique(table.labels, return_counts=True)
    single = classes[counts < 2]
    if len(single):
        names = [table.class_names[c] if table.class_names else str(c) for c in single[:10]]
        log.warning("left out %d training class(es) with a single image (no positive pair): %s%s", len(single),
                    ", ".join(names), " ..." if len(single) > 10 else "")
        table = table.subset(~np.isin(table.labels, single))
    return table


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """One 32-bit seed for each (run seed, epoch, process)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class EpochSeededSampler(Sampler[tuple[int, int]]):
    """The training sampler, made a function of (seed, epoch, rank). Each epoch iterates a fresh copy of
    ``sampler`` (PML samplers shuffle their own state in place) with numpy's and torch's global generators
    seeded for the epoch (PML samplers draw from numpy's; dropout from torch's), and pairs every row with
    its own augmentation seed. So an epoch's batches and augmentations are the same whatever the number of
    loader workers, and a run resumed from ``last.ckpt`` trains its remaining epochs as an uninterrupted
    run does."""

    def __init__(self, sampler: Sampler[int], seed: int, epoch: Callable[[], int], rank: int = 0):
        self.sampler, self.seed, self.epoch, self.rank = sampler, seed, epoch, rank

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        seed = epoch_seed(self.seed, self.epoch(), self.rank)
        np.random.seed(seed)
        torch.manual_seed(seed)
        rows = list(copy.deepcopy(self.sampler))
        seeds = np.random.default_rng(seed).integers(0, 2**32, len(rows))
        return iter(zip(rows, seeds.tolist()))


@dataclass(frozen=True)
class _Tables:
    """What :meth:`RetrievalDataModule.setup` makes of the splits."""

    train: ImageTable
    val: ImageTable
    test: ImageTable
    hard_pairs: list[tuple[int, int]]


class RetrievalDataModule(L.LightningDataModule):
    """Class-disjoint train / validation / test loaders over a data source's splits.

    Validation classes are split off the training classes (``val_classes``: a share or a count)
    unless the source provides its own, so checkpoints are chosen on classes never trained on
    and the test classes are touched only for the final report. ``instances``: every training image is
    its own class (self-supervised, see :mod:`lookalike.data.unlabeled`); the PK sampler then draws
    ``m`` augmented views of each image it picks. ``feedback``: a feedback CSV of marks on search results
    (:mod:`lookalike.data.feedback`), its photos added to training and ``feedback_pairs`` of its confused class
    pairs put into every batch; ``feedback_val`` > 0: the photos of that share of its marked products are the
    validation queries (photo -> catalogue) instead of the data set's validation; ``feedback_boxes``: harvested
    photos come with their boxes (the box model's training). Building one costs nothing; :meth:`setup` reads the
    images and makes the tables.
    """

    def __init__(
        self,
        splits: Splits,
        preprocessing: dict[str, Any] | None,
        sampler: Callable[..., Sampler] | None = None,
        augment: Callable | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        val_classes: float | int = 0.15,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        on_bad_image: str = "skip",
        instances: bool = False,
        feedback: str | None = None,
        feedback_pairs: int = 1,
        feedback_val: float = 0.0,
        feedback_boxes: bool = False,
    ):
        super().__init__()
        self.splits, self.on_bad_image, self.val_classes = splits, on_bad_image, val_classes
        self.instances, self.feedback, self.feedback_pairs = instances, feedback, feedback_pairs
        self.feedback_val, self.feedback_boxes = feedback_val, feedback_boxes
        self.preprocessing = preprocessing
        self.sampler = sampler
        self.augment = augment
        self.seed = seed
        self._resumed_epoch: int | None = None
        self._tables: _Tables | None = None
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.loader_args = dict(
            num_workers=num_workers,
            pin_memory=pin_memory and torch.cuda.is_available(),
            persistent_workers=persistent_workers and num_workers > 0,
        )

    def setup(self, stage: str | None = None) -> None:
        """The tables, once (Lightning calls this for each stage; the run first, to size the model): unreadable
        images left out, validation classes split off, classes without a positive pair left out, the feedback's
        photos and pairs added, every split checked non-empty."""
        if self._tables is not None:
            return
        splits = without_unreadable(self.splits, self.on_bad_image)
        if len(splits.train) == 0:
            raise LookalikeError("The training split is empty: check data.root and the class split settings")
        marks = read_feedback(self.feedback) if self.feedback else []
        held_out = None
        if self.feedback_val:
            if not self.feedback:
                raise LookalikeError("data.feedback_val holds out feedback photos: give data.feedback=CSV too")
            train, val = splits.train, held_out_photos(splits.train, marks, self.feedback_val, self.seed)
            held_out = set(val.subset(val.is_query).label_names())
        elif splits.val is None:
            if not self.val_classes or self.val_classes <= 0:
                raise LookalikeError("data.val_classes must be > 0: validation classes choose the best checkpoint")
            train, val = split_off_classes(splits.train, self.val_classes, self.seed)
        else:
            train, val = splits.train, splits.val
        kept = trainable(train, self.instances)
        if len(kept) == 0 and len(train) > 0:
            raise LookalikeError("No training class has two images, so there is no positive pair: for a catalogue "
                                 "without labels use data.instances=true (experiment=selfsup_catalog) or give it "
                                 "classes (data.source.pseudo_labels=CSV of lookalike pseudo-labels)")
        test, pairs = splits.test, []
        if self.feedback:
            added = with_feedback(kept, marks, held_out=set(val.label_names()) if held_out is None else held_out,
                                  boxes=self.feedback_boxes)
            log.info(added.summary)
            kept, pairs = added.table, added.hard_pairs
            photos = {os.path.realpath(p) for p in added.photos}
            test = test.subset(np.array([os.path.realpath(p) not in photos for p in test.paths], bool))
            trained = set(test.label_names()) & set(kept.label_names())
            if trained:
                log.warning("feedback trains on %d test class(es): the test report is not zero-shot for them "
                            "(its photos are left out of the test queries)", len(trained))
        train_table = kept.relabelled()
        label_of = dict(zip(train_table.label_names(), train_table.labels.tolist()))
        for name, table in (("training", train_table), ("validation", val), ("test", splits.test)):
            if len(table) == 0:
                raise LookalikeError(f"The {name} split is empty: check data.root and the class split settings")
        self._tables = _Tables(train_table, val, test, [(label_of[a], label_of[b]) for a, b in pairs])

    def _ready(self) -> _Tables:
        self.setup()
        return self._tables

    @property
    def train_table(self) -> ImageTable:
        return self._ready().train

    @property
    def val_table(self) -> ImageTable:
        return self._ready().val

    @property
    def test_table(self) -> ImageTable:
        return self._ready().test

    @property
    def hard_pairs(self) -> list[tuple[int, int]]:
        """Class pairs (training labels) the feedback confused, put into every batch."""
        return self._ready().hard_pairs

    @property
    def num_train_classes(self) -> int:
        return self.train_table.num_classes

    @property
    def _sampler_m(self) -> int | str:
        """The configured sampler's images per class (``sampler.m``), or "?" without one."""
        return getattr(self.sampler, "keywords", {}).get("m", "?")

    def _pk_sampler(self) -> Sampler | None:
        if self.sampler is None:
            return None
        labels = self.train_table.labels
        m = self._sampler_m
        small = int((np.bincount(labels) < m).sum()) if isinstance(m, int) else 0
        if small and not self.instances:
            log.warning("%d training class(es) have fewer than sampler.m=%d images: their images repeat within a "
                        "batch (the sampler draws them with replacement)", small, m)
        try:
            # with instances, an epoch shows every image about once, as m views
            length = len(labels) * (m if self.instances and isinstance(m, int) else 1)
            roles = role_arguments(self.sampler, is_catalogue=self.train_table.is_catalogue)
            return self.sampler(labels=labels, batch_size=self.batch_size, length_before_new_iter=length, **roles)
        except AssertionError as e:
            raise LookalikeError(
                f"Cannot build PK batches of data.batch_size={self.batch_size} with sampler.m={m} from "
                f"{self.train_table.num_classes} training classes and {len(labels)} images: the batch size must "
                f"be a multiple of m, at most m x number of classes, and at most the number of images ({e})"
            ) from e

    def _current_epoch(self) -> int:
        """The epoch the training loader is about to serve. A resumed run creates its first loader before
        Lightning restores its epoch count, so that one is taken from this module's checkpointed state."""
        if self._resumed_epoch is not None:
            epoch, self._resumed_epoch = self._resumed_epoch, None
            return epoch
        return self.trainer.current_epoch if self.trainer is not None else 0

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints (Lightning writes them at the end of an epoch): the next epoch to serve."""
        return {"next_epoch": self.trainer.current_epoch + 1} if self.trainer is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_epoch = state_dict.get("next_epoch")

    def train_dataloader(self) -> DataLoader:
        """PK batches (or shuffled ones without a sampler); under DDP each process draws its own."""
        dataset = ImageDataset(self.train_table, train_transform(self.augment, self.preprocessing))
        sampler = self._pk_sampler() or RandomSampler(dataset)
        if self.hard_pairs and self.feedback_pairs > 0:
            m = self._sampler_m if isinstance(self._sampler_m, int) else 4  # shuffled batches: pairs of 4
            sampler = HardPairBatches(sampler, self.train_table.labels, self.hard_pairs, m, self.batch_size,
                                      self.feedback_pairs)
        seeded = EpochSeededSampler(sampler, self.seed, epoch=self._current_epoch, rank=_rank_and_world()[0])
        return DataLoader(dataset, batch_size=self.batch_size, sampler=seeded, drop_last=True, **self.loader_args)

    def eval_dataloader(self, table: ImageTable, distributed: bool = True) -> DataLoader:
        """An ordered loader over any table with the evaluation transform; under DDP each process
        gets its shard (padded with repeats, which the metrics drop by row index)."""
        dataset = ImageDataset(table, eval_transform(self.preprocessing), min_side=eval_resize(self.preprocessing))
        rank, world = _rank_and_world()
        sampler = DistributedSampler(dataset, world, rank, shuffle=False) if distributed and world > 1 else None
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=sampler, **self.loader_args)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_table)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_table)


def datamodule_from_config(data: DictConfig, seed: int, cache_dir: str, preprocessing: dict[str, Any] | None = None,
                           **options: Any) -> RetrievalDataModule:
    """The DataModule of a ``data`` config (``conf/data/*.yaml``): its source's splits, resized once into
    ``cache_dir`` with ``data.resize_cache``, and its loader options. Training and evaluation both build their
    data here, so they see the same tables; ``options`` add or replace keyword arguments of
    :class:`RetrievalDataModule` (training's sampler and augmentation, evaluation's batch size)."""
    # image_size is the model's (evaluation has no model group to resolve it from)
    settings = {k: data[k] for k in data if k not in ("root", "source", "resize_cache", "image_size")}
    splits = build(data.source, "the data set (data=...)")
    if data.get("resize_cache"):
        splits = resized_splits(splits, int(data.resize_cache), cache_dir)
    return RetrievalDataModule(splits, preprocessing, seed=seed, **{**settings, **options})


def build_datamodule(cfg: DictConfig, preprocessing: dict | None = None) -> RetrievalDataModule:
    """The training data of a run's config: the data set's DataModule with the configured sampler and
    augmentation."""
    return datamodule_from_config(
        cfg.data, cfg.seed, cfg.paths.cache_dir, preprocessing,
        sampler=build(cfg.sampler, "the sampler (sampler=...)") if cfg.get("sampler") else None,
        augment=build(cfg.augment, "the augmentation (augment=...)") if cfg.get("augment") else None,
    )
