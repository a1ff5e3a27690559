"""Training that knows photos from catalogue pictures: batches pair each class's picture with its photos, and
the dense triplet loss can weigh photo <-> picture triplets above the others."""

from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lookalike.data.samplers import CatalogueAndPhotosSampler
from lookalike.errors import LookalikeError
from lookalike.models.dense_triplet import DenseSemiHardTripletLoss
from tests.helpers import TINY_MODEL, compose_config, module_and_data, write_image


def test_every_group_holds_its_classs_catalogue_picture_and_photos() -> None:
    labels = np.repeat(np.arange(6), 5)  # 6 classes of 5 rows; the first row of classes 0-4 is the picture
    is_catalogue = np.zeros(30, bool)
    is_catalogue[[0, 5, 10, 15, 20]] = True
    np.random.seed(0)
    rows = list(CatalogueAndPhotosSampler(labels, is_catalogue, m=3, batch_size=6, length_before_new_iter=60))
    assert len(rows) == 60
    groups = np.array(rows).reshape(-1, 3)
    for group in groups:
        assert len(set(labels[group])) == 1
        if labels[group[0]] < 5:
            assert is_catalogue[group[0]] and not is_catalogue[group[1:]].any()
        else:  # class 5 has no picture: three of its images
            assert not is_catalogue[group].any()
    for batch in groups.reshape(-1, 2, 3):
        assert labels[batch[0, 0]] != labels[batch[1, 0]]  # two different classes in a batch
    np.random.seed(0)
    assert rows == list(CatalogueAndPhotosSampler(labels, is_catalogue, 3, 6, 60))  # seeded by the epoch's seed
    with pytest.raises(LookalikeError, match="divide the batch size"):
        CatalogueAndPhotosSampler(labels, is_catalogue, m=4, batch_size=6, length_before_new_iter=60)


def test_catalogue_weight_is_the_weighted_mean_over_triplets() -> None:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(6).repeat_interleave(4)
    is_catalogue = torch.arange(24) % 4 == 0
    x = torch.randn(24, 8, generator=g, requires_grad=True)
    got = DenseSemiHardTripletLoss(0.3, catalogue_weight=4.0)(x, labels, is_catalogue=is_catalogue)
    d = torch.cdist(F.normalize(x.detach(), dim=1), F.normalize(x.detach(), dim=1))
    total = weight = 0.0
    for a, p, n in product(range(24), repeat=3):  # the plain loop the dense version must equal
        if a == p or labels[a] != labels[p] or labels[a] == labels[n]:
            continue
        gap = float(d[a, n] - d[a, p])
        loss = max(0.0, float(d[a, p] - d[a, n]) + 0.3)
        if 0 < gap <= 0.3 and loss > 0:
            w = 4.0 if bool(is_catalogue[a]) != bool(is_catalogue[p]) else 1.0
            total, weight = total + w * loss, weight + w
    assert weight > 0 and float(got) == pytest.approx(total / weight, abs=1e-5)
    same = DenseSemiHardTripletLoss(0.3, catalogue_weight=1.0)
    assert float(same(x, labels, is_catalogue=is_catalogue)) == pytest.approx(float(same(x, labels)), abs=1e-7)


def test_a_manifest_with_roles_trains_with_picture_and_photo_batches(tmp_path: Path) -> None:
    import lightning as L

    rows = ["path,label,split,role"]
    for c in range(6):
        for j in range(4):
            write_image(tmp_path / f"{c}_{j}.jpg", (40 * c, 200 - 30 * c, 90), seed=10 * c + j)
            split = "train" if c < 4 else "test"
            rows.append(f"{c}_{j}.jpg,item{c},{split},{'gallery' if j == 0 else 'query'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    cfg = compose_config([*TINY_MODEL, "data=manifest", f"data.root={tmp_path / 'm.csv'}", "data.val_classes=1",
                          "data.batch_size=6", "data.num_workers=0", "sampler=catalogue_photos", "sampler.m=3",
                          "loss=triplet_dense", "miner=none", "loss.catalogue_weight=3", f"paths.output_dir={tmp_path}"])
    module, dm = module_and_data(cfg)
    seen = []
    forward = module.loss_fn.forward

    def recording(emb, labels, tuples=None, is_catalogue=None):
        seen.append(is_catalogue.clone())
        return forward(emb, labels, tuples, is_catalogue)

    module.loss_fn.forward = recording
    L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
    assert len(seen) == 2 and all(s.tolist() == [True, False, False] * 2 for s in seen)
