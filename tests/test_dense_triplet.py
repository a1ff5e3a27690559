"""The dense semi-hard triplet loss equals PML's miner + loss (the reference) without reading the host."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses, miners

from lookalike.errors import LookalikeError
from lookalike.models.dense_triplet import DenseSemiHardTripletLoss
from lookalike.profiling import HostReads
from tests.helpers import TINY_MODEL, compose_config, module_and_data


def _pml(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    return losses.TripletMarginLoss(margin=margin)(embeddings, labels, miner(embeddings, labels))


@pytest.mark.parametrize("margin", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("seed", range(6))
def test_loss_and_gradients_equal_pmls_semihard_miner_and_triplet_loss(margin: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    classes, m = (8, 4) if seed % 2 else (5, 3)  # PK batches, and (odd seeds) another shape
    labels = torch.arange(classes).repeat_interleave(m)[torch.randperm(classes * m, generator=g)]
    x = torch.randn(len(labels), 16, generator=g)
    if seed == 0:
        x[1] = x[0]  # two identical embeddings: a zero distance
    if seed == 2:
        x = x[:, :1].repeat(1, 16)  # every embedding on one line: few semi-hard triplets
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    want, got = _pml(a, labels, margin), DenseSemiHardTripletLoss(margin)(b, labels)
    want.backward()
    got.backward()
    assert float(got) == pytest.approx(float(want), abs=1e-5)
    torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=0)
    assert torch.isfinite(b.grad).all()


def test_no_semihard_triplet_gives_zero_loss_and_zero_gradients() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)  # easy: far apart
    loss = DenseSemiHardTripletLoss(0.2)(x, labels)
    loss.backward()
    assert float(loss) == float(_pml(x.detach(), labels, 0.2)) == 0.0 and float(x.grad.abs().sum()) == 0.0


def test_the_dense_loss_reads_nothing_on_the_host_and_pml_does() -> None:
    labels = torch.arange(8).repeat_interleave(4)
    x = torch.randn(32, 16, requires_grad=True)
    with HostReads() as dense:
        DenseSemiHardTripletLoss(0.2)(x, labels).backward()
    with HostReads() as pml:
        _pml(x, labels, 0.2).backward()
    assert sum(dense.sites.values()) == 0 and sum(pml.sites.values()) > 0


def test_it_trains_from_its_config_and_refuses_a_second_miner(image_folder: Path, tmp_path: Path) -> None:
    import lightning as L

    overrides = [*TINY_MODEL, "loss=triplet_dense", "data=image_folder", f"data.root={image_folder}",
                 "data.source.train_classes=0.67", "data.batch_size=8", "data.val_classes=1", "data.num_workers=0",
                 f"paths.output_dir={tmp_path}"]
    module, dm = module_and_data(compose_config([*overrides, "miner=none"]))
    assert isinstance(module.loss_fn, DenseSemiHardTripletLoss) and module.miner is None
    before = [p.detach().clone() for p in module.embedder.head.parameters()]
    L.Trainer(accelerator="cpu", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=dm)
    assert any(not torch.equal(p, q) for p, q in zip(before, module.embedder.head.parameters()))
    with pytest.raises(LookalikeError, match="set miner=none"):
        DenseSemiHardTripletLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), (torch.tensor([0]),) * 3)


def test_the_rows_roles_go_to_what_declares_them() -> None:
    """One mechanism for the sampler and the loss: whatever takes ``is_catalogue`` gets it, nothing else does."""
    import functools

    from pytorch_metric_learning.losses import TripletMarginLoss

    from lookalike.data.samplers import CatalogueAndPhotosSampler
    from lookalike.data.table import ImageTable, role_arguments

    table = ImageTable(["a", "b", "c"], np.array([0, 0, 1]), is_query=np.array([True, False, False]),
                       is_gallery=np.array([False, True, True]))
    assert table.is_catalogue.tolist() == [False, True, True]
    assert role_arguments(DenseSemiHardTripletLoss().forward, is_catalogue=table.is_catalogue).keys() == \
        {"is_catalogue"}
    assert role_arguments(TripletMarginLoss().forward, is_catalogue=table.is_catalogue) == {}
    assert role_arguments(functools.partial(CatalogueAndPhotosSampler, m=2), is_catalogue=1) == {"is_catalogue": 1}
