"""The LightningModule: every loss x miner trains and validates; training really learns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from omegaconf import OmegaConf

from lookalike.data.datamodule import RetrievalDataModule
from lookalike.data.image_folder import image_folder as read_split
from lookalike.data.table import Splits, split_off_classes
from lookalike.embedder.embed import embed_loader
from lookalike.embedder.file import load_embedder
from lookalike.models.lit_embedder import LitEmbedder
from lookalike.profiling import HostReads
from lookalike.retrieval import retrieval_metrics
from lookalike.errors import LookalikeError
from lookalike.models.wise import choose_alpha
from lookalike.data.datamodule import build_datamodule
from lookalike.train import choose_weights, run
from tests.helpers import TINY_MODEL, compose_config, module_and_data, tiny_overrides

LOSSES = ["triplet", "contrastive", "multi_similarity", "proxy_anchor", "arcface"]
MINERS = ["semihard", "batch_hard", "distance_weighted", "multi_similarity", "none"]


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, **kw)


@pytest.mark.parametrize("miner", MINERS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_and_miner_gives_a_finite_loss_and_gradients(loss: str, miner: str) -> None:
    """Each loss x miner of conf/, built as the LightningModule builds them, on random embeddings of a PK batch:
    the miner's tuples index the batch with the right labels, the loss and its gradients are finite and not zero."""
    from lookalike.config import build

    cfg = compose_config(TINY_MODEL + [f"loss={loss}", f"miner={miner}"])
    fill = {k: v for k, v in (("num_classes", 4), ("embedding_size", 16)) if k in cfg.loss and cfg.loss[k] is None}
    loss_fn = build(cfg.loss, "the loss", **fill)
    miner_fn = build(cfg.miner, "the miner") if "_target_" in (cfg.get("miner") or {}) else None
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 16), dim=-1).requires_grad_()
    labels = torch.arange(4).repeat_interleave(4)
    tuples = miner_fn(emb, labels) if miner_fn is not None else None
    if tuples is not None and len(tuples) == 3:  # (anchor, positive, negative)
        a, p, n = tuples
        assert len(a) > 0 and (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()
    elif tuples is not None:  # (anchor, positive, anchor, negative) pairs
        a1, p, a2, n = tuples
        assert len(a1) + len(a2) > 0 and (labels[a1] == labels[p]).all() and (labels[a2] != labels[n]).all()
    value = loss_fn(emb, labels, tuples)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0


@pytest.mark.parametrize("loss, miner", [("triplet", "semihard"), ("proxy_anchor", "none")])
def test_a_loss_trains_and_validates(loss: str, miner: str, image_folder: Path, tmp_path: Path) -> None:
    """A training run (a loss with a miner, and one whose loss has parameters of its own): finite loss, the head
    trained, validation reporting the retrieval metrics of the trained weights."""
    cfg = compose_config(TINY_MODEL + [f"loss={loss}", f"miner={miner}", "data=image_folder",
                                       f"data.root={image_folder}", "data.source.train_classes=0.67",
                                       "data.batch_size=8", "sampler.m=4", "data.val_classes=1",
                                       "data.num_workers=0", f"paths.output_dir={tmp_path}"])
    module, dm = module_and_data(cfg)
    before = [p.detach().clone() for p in module.embedder.head.parameters()]
    trainer = _trainer(max_steps=2, limit_val_batches=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    logged = trainer.logged_metrics
    assert torch.isfinite(logged["train/loss"])
    # validation reports the retrieval metrics of the trained weights on the validation classes
    val = embed_loader(module.embedder, dm.val_dataloader(), progress=False)
    want = retrieval_metrics(val["embeddings"], val["label"], val["is_query"], val["is_gallery"])
    assert float(logged["val/recall@1"]) == pytest.approx(want["recall@1"], abs=1e-6)
    assert float(logged["val/map@r"]) == pytest.approx(want["map@r"], abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.embedder.head.parameters()))
    if miner != "none":
        assert "train/mined_fraction" in logged
    names = [g["name"] for g in trainer.optimizers[0].param_groups]
    assert names == (["backbone", "head", "loss"] if loss == "proxy_anchor" else ["backbone", "head"])


@pytest.fixture
def separable(tmp_path: Path) -> Path:
    """8 classes of stripe orientations; every image has random colours, so colour is a nuisance
    that a random network latches on to and training must learn to ignore."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:24, :24]
    for c in range(8):
        a = c * np.pi / 8
        for i in range(8):
            stripes = ((np.cos(a) * xx + np.sin(a) * yy + rng.uniform(0, 6)) // 3 % 2).astype(bool)
            fg, bg = rng.integers(0, 256, (2, 3))
            img = np.where(stripes[..., None], fg, bg).astype(np.uint8)
            path = tmp_path / "sep" / f"c{c}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return tmp_path / "sep"


@pytest.mark.slow  # several seconds: in the slow suite (CI runs both)
def test_loss_falls_and_recall_rises_on_a_separable_set(separable: Path, tmp_path: Path) -> None:
    """A randomly initialised tiny model learns the stripe classes within a few dozen steps."""
    cfg = compose_config(TINY_MODEL + ["data=image_folder", f"data.root={separable}",
                                       "data.batch_size=16", "data.num_workers=0", "augment=eval", "miner=none",
                                       "optim.lr.backbone=1e-3", "optim.lr.head=1e-2", "optim.freeze_bn=false",
                                       f"paths.output_dir={tmp_path}", "seed=0"])
    L.seed_everything(0)
    splits = read_split(separable, train_classes=0.75)
    # validate on the training classes themselves: this checks that optimisation works at all
    train, _ = split_off_classes(splits.train, 1, 0)
    dm = RetrievalDataModule(Splits(train, splits.test, train), None, sampler=None, batch_size=16, num_workers=0)
    module = LitEmbedder(OmegaConf.to_container(cfg, resolve=True), dm.num_train_classes)
    dm.preprocessing = module.embedder.preprocessing
    first = _trainer(max_epochs=1, limit_train_batches=1)
    first.fit(module, datamodule=dm)
    start = {k: float(v) for k, v in first.logged_metrics.items()}
    trainer = _trainer(max_epochs=30)
    trainer.fit(module, datamodule=dm)
    end = {k: float(v) for k, v in trainer.logged_metrics.items()}
    assert end["train/loss"] < 0.5 * start["train/loss"]
    assert end["val/recall@1"] > start["val/recall@1"] + 0.2
    assert end["val/map@r"] > start["val/map@r"]


def test_freeze_bn_keeps_backbone_statistics(image_folder: Path, tmp_path: Path) -> None:
    cfg = compose_config(TINY_MODEL + ["data=image_folder", f"data.root={image_folder}", "data.batch_size=8",
                                       "data.val_classes=1", "data.num_workers=0", "optim.freeze_bn=true",
                                       "optim.freeze_backbone_epochs=1", f"paths.output_dir={tmp_path}"])
    dm = build_datamodule(cfg)
    module = LitEmbedder(OmegaConf.to_container(cfg, resolve=True), dm.num_train_classes)
    dm.preprocessing = module.embedder.preprocessing
    stats = {k: v.clone() for k, v in module.embedder.backbone.state_dict().items() if "running" in k}
    weights = {k: v.clone() for k, v in module.embedder.backbone.state_dict().items() if "running" not in k}
    _trainer(max_epochs=1, limit_val_batches=1).fit(module, datamodule=dm)
    now = module.embedder.backbone.state_dict()
    assert all(torch.equal(now[k], v) for k, v in stats.items())
    assert all(torch.equal(now[k], v) for k, v in weights.items())  # frozen in the first epoch


def test_weight_averaging_is_what_is_tested_and_exported(data_cache: Path, tmp_path: Path) -> None:
    """callbacks=ema: the test metrics and embedder.pt use best.ckpt's averaged weights, not the last
    optimizer step's (Lightning's callback would restore those when testing from a checkpoint path)."""
    report = run(compose_config(tiny_overrides(data_cache, tmp_path / "run") + [
        "logger=none", "callbacks=ema", "callbacks.ema.decay=0.5", "optim.lr.head=0.1", "select.alphas=[1.0]"]))
    ckpt = torch.load(report["best_checkpoint"], map_location="cpu", weights_only=False)
    exported = load_embedder(report["embedder"]).state_dict()
    averaged = {k.removeprefix("embedder."): v for k, v in ckpt["state_dict"].items() if k.startswith("embedder.")}
    current = {k.removeprefix("embedder."): v for k, v in ckpt["current_model_state"].items()}
    assert exported.keys() == averaged.keys()
    assert all(torch.equal(exported[k], averaged[k]) for k in exported)
    assert any(not torch.equal(averaged[k], current[k]) for k in exported)  # the average is not the last step


def test_the_exported_weights_are_the_best_interpolation_on_validation(tiny_cfg, capsys) -> None:
    """select.alphas (WiSE-FT): the run reports every alpha's validation metrics, exports the best one's
    weights, and alpha 1 is the best checkpoint (its validation MAP@R is the checkpoint's)."""
    report = run(tiny_cfg)
    selection = report["selection"]
    scores = {float(a): m["map@r"] for a, m in selection["validation"].items()}
    assert sorted(scores) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert scores[selection["best_alpha"]] == max(scores.values())
    assert selection["alpha"] >= selection["best_alpha"]  # a larger alpha only within one standard error
    assert scores[1.0] == pytest.approx(report["best_val"], abs=1e-4)
    printed = capsys.readouterr().out
    assert "Validation classes" in printed and selection["verdict"] in printed
    assert (selection["name"] in report["test"]) == (selection["alpha"] != 1)


def test_a_fine_tuning_that_hurts_exports_the_start(tiny_cfg) -> None:
    module, dm = module_and_data(tiny_cfg)
    start = {k: v.clone() for k, v in module.embedder.state_dict().items()}
    with torch.no_grad():  # a "fine-tuning" that wrecked the weights
        for p in module.embedder.parameters():
            p.add_(torch.randn_like(p) * 50 * (p.abs().mean() + 1))
    plain_best = OmegaConf.merge(tiny_cfg, {"select": {"within_se": 0}})  # 2 tiny classes cannot tell apart
    selection = choose_weights(module, dm, plain_best, start, torch.device("cpu"))
    assert selection["alpha"] == 0 and "did not beat" in selection["verdict"]
    assert all(torch.equal(v, start[k]) for k, v in module.embedder.state_dict().items())
    with pytest.raises(LookalikeError, match="not a retrieval metric"):
        choose_weights(module, dm, OmegaConf.merge(tiny_cfg, {"optimized_metric": "val/loss"}), start, "cpu")


def test_a_larger_alpha_within_one_standard_error_over_classes_is_exported() -> None:
    """The one-standard-error rule over validation classes: a lead the classes disagree on does not turn the
    export away from the fine-tuned end; a lead every class shows does; within_se 0 is the plain best."""
    classes = torch.tensor([0, 0, 1, 1])
    disagree = {0.0: torch.tensor([0.8, 0.8, 0.76, 0.76]), 0.5: torch.tensor([0.9, 0.9, 0.7, 0.7]),
                1.0: torch.tensor([0.8, 0.8, 0.78, 0.78])}
    assert choose_alpha(disagree, classes) == (1.0, 0.5)
    assert choose_alpha(disagree, classes, within_se=0) == (0.5, 0.5)
    # the start scores best and the fine-tuned end below it, within the error: the start stays (never an export
    # that measured worse than the model training started from)
    below_start = {0.0: torch.tensor([0.9, 0.9, 0.7, 0.7]), 0.75: torch.tensor([0.88, 0.88, 0.71, 0.71]),
                   1.0: torch.tensor([0.8, 0.8, 0.78, 0.78])}
    assert choose_alpha(below_start, classes) == (0.0, 0.0)
    agree = {0.0: torch.tensor([0.9, 0.8, 0.7, 0.6]), 1.0: torch.tensor([0.85, 0.76, 0.66, 0.55])}
    assert choose_alpha(agree, classes) == (0.0, 0.0)
    assert choose_alpha(agree, torch.zeros(4)) == (0.0, 0.0)  # one class: the best alone
    assert choose_alpha({0.0: torch.tensor([0.5, 0.6, 0.5, 0.6]), 1.0: torch.tensor([0.7, 0.9, 0.7, 0.9])},
                        classes) == (1.0, 1.0)


@pytest.mark.parametrize("curve, epochs, best", [
    ([0.5] * 10, 10, 9),  # flat: a plateau never stops a run; of tied epochs the later is kept
    ([0.5, 0.5, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 7, 3),  # worse 3 times in a row after the best: stop
    ([0.6, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4], 5, 0),  # worse from the start: not before half of 10
])
def test_early_stopping_stops_on_a_worsening_trend_after_its_share_of_the_epochs(
        curve: list[float], epochs: int, best: int, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    class Curve(_TinyNet):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).sum()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val/recall@1", curve[self.current_epoch])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.0)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 3, 8, 8)), batch_size=2)
    callbacks = compose_config(["optimized_metric=val/recall@1", f"paths.output_dir={tmp_path}"]).callbacks
    stop, keep = instantiate(callbacks.early_stopping), instantiate(callbacks.model_checkpoint)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        max_epochs=10, callbacks=[stop, keep])
    trainer.fit(Curve(), data, data)
    assert trainer.current_epoch == epochs
    assert torch.load(keep.best_model_path, weights_only=False)["epoch"] == best


class _TinyNet(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                       torch.nn.Linear(144, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_ema_of_the_config_equals_torchs_ema_without_host_reads() -> None:
    """callbacks=ema: the average torch's AveragedModel + get_ema_avg_fn computes tensor by tensor (weights and
    BatchNorm statistics), updated without reading a tensor on the host (no wait for the GPU per step);
    integer buffers (BatchNorm's batch counters) follow the model."""
    from types import SimpleNamespace

    from hydra.utils import instantiate
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    cb = instantiate(compose_config(["callbacks=ema", "callbacks.ema.decay=0.9"]).callbacks.ema)
    torch.manual_seed(0)
    module, trainer = _TinyNet(), SimpleNamespace(global_step=0)
    cb.setup(trainer, module, "fit")
    reference = AveragedModel(module, use_buffers=True, avg_fn=get_ema_avg_fn(0.9))
    reads = []
    for step in range(1, 5):
        module(torch.randn(2, 3, 8, 8))  # moves the BatchNorm statistics and its counter
        with torch.no_grad():
            for p in module.parameters():
                p.add_(torch.randn_like(p))
        trainer.global_step = step
        with HostReads() as counted:
            cb.on_train_batch_end(trainer, module, None, None, step - 1)
        reads.append(counted.sites.total())
        reference.update_parameters(module)
    assert reads[1:] == [0, 0, 0]  # the first update reads the update count once (it may come from a resume)
    ours, ref, now = cb._average_model.module.state_dict(), reference.module.state_dict(), module.state_dict()
    assert ours.keys() == ref.keys()
    for k in ref:
        expected = ref[k] if ref[k].is_floating_point() else now[k]
        torch.testing.assert_close(ours[k], expected, rtol=1e-6, atol=1e-6, msg=k)
    assert not torch.equal(ours["net.0.weight"], now["net.0.weight"])
    assert int(cb._average_model.n_averaged) == 4


def test_batch_statistics_are_logged_on_logging_steps_only(image_folder: Path, tmp_path: Path) -> None:
    """train/pos_sim, train/neg_sim and the LRs are computed on the steps Lightning logs (every
    trainer.log_every_n_steps) and there equal the plain means over positive and negative pairs."""
    from lightning.pytorch.loggers import CSVLogger

    module, dm = _module(image_folder, tmp_path)
    calls = []
    original = module._log_batch_stats
    module._log_batch_stats = lambda *a: (calls.append(module.global_step), original(*a))
    L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path, name="csv", version=0), enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, max_steps=6, log_every_n_steps=2,
              limit_val_batches=0).fit(module, datamodule=dm)
    assert calls == [1, 3, 5]
    rows = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, r.split(","))) for r in rows[1:]]
    train_rows = [r for r in logged if r.get("train/loss")]
    assert [int(r["step"]) for r in train_rows] == [1, 3, 5]
    assert all(r["train/pos_sim"] and r["train/neg_sim"] and r["lr/backbone"] for r in train_rows)

    stats = {}
    module.log_dict = lambda d, **kw: stats.update(d)
    emb = torch.nn.functional.normalize(torch.randn(8, 5), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    module._log_batch_stats(emb, labels, None)
    sim, same = emb @ emb.T, labels[:, None] == labels[None, :]
    assert stats["train/pos_sim"] == pytest.approx(sim[same & ~torch.eye(8, dtype=torch.bool)].mean().item(), abs=1e-6)
    assert stats["train/neg_sim"] == pytest.approx(sim[~same].mean().item(), abs=1e-6)


class _ReadsPerStep(L.Callback):
    """Host reads made by lookalike's own code in each training step (forward, loss, backward, non-finite
    check, optimizer step, EMA update)."""

    def __init__(self) -> None:
        self.reads: list[int] = []

    def on_train_batch_start(self, *args) -> None:
        self.mode = HostReads()
        self.mode.__enter__()

    def on_train_batch_end(self, *args) -> None:
        self.mode.__exit__(None, None, None)
        self.reads.append(sum(n for site, n in self.mode.sites.items() if " in lookalike/" in site))


def test_lookalike_reads_no_tensor_on_the_host_between_logging_steps(image_folder: Path, tmp_path: Path) -> None:
    """With the default fused AdamW and callbacks=ema, lookalike's bookkeeping takes no .item(), bool() or
    boolean index of a tensor in a training step (on a GPU each would wait for it), except the EMA's one
    read of its update count in the first step. (Its reads on logging steps, the progress bar's copy of the
    loss and the non-finite counts, are copies to the host, which a CPU run does not make.)"""
    from lookalike.models.ema import FusedEMA

    module, dm = _module(image_folder, tmp_path, "miner=none")
    census = _ReadsPerStep()
    L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, max_steps=6, log_every_n_steps=3, limit_val_batches=0,
              callbacks=[FusedEMA(), census]).fit(module, datamodule=dm)
    assert census.reads[0] > 0 and census.reads[1:] == [0] * 5


def _module(image_folder: Path, tmp_path: Path, *overrides: str) -> tuple[LitEmbedder, RetrievalDataModule]:
    cfg = compose_config(TINY_MODEL + ["data=image_folder", f"data.root={image_folder}", "data.source.train_classes=0.67",
                                       "data.batch_size=8", "sampler.m=4", "data.val_classes=1", "data.num_workers=0",
                                       f"paths.output_dir={tmp_path}", *overrides])
    return module_and_data(cfg)


def test_uint8_batches_are_normalised_by_the_model() -> None:
    """Loaders hand over uint8 pixels; the embedder normalises them as the float pipeline would."""
    from lookalike.models.embedder import Embedder

    e = Embedder({"name": "resnet18", "pretrained": False}, {"embedding_size": 8}, 32).eval()
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    mean, std = (torch.tensor(e.preprocessing[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        assert torch.allclose(e(pixels), e((pixels / 255.0 - mean) / std), atol=1e-5)
    assert "mean" not in e.state_dict()  # derived from the preprocessing, not saved


def test_speed_switches_train(image_folder: Path, tmp_path: Path) -> None:
    """model.channels_last and optim.lr.layer_decay: NHWC weights, per-block learning rates, steps run."""
    module, dm = _module(image_folder, tmp_path, "model.channels_last=true", "optim.lr.layer_decay=0.5",
                         "optim.max_nonfinite_steps=0")
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    conv = next(m for m in module.embedder.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    groups = [g for g in trainer.optimizers[0].param_groups if g["name"].startswith("backbone.")]
    assert len(groups) > 2 and groups[0]["initial_lr"] < groups[-1]["initial_lr"]
    assert torch.isfinite(trainer.logged_metrics["train/loss"])


@pytest.mark.slow
def test_compiled_training_keeps_checkpoint_names(image_folder: Path, tmp_path: Path) -> None:
    """model.compile: the embedder is compiled in place; its state dict keeps the plain names."""
    module, dm = _module(image_folder, tmp_path, "model.compile=true")
    names = set(module.state_dict())
    _trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=dm)
    assert module.embedder._compiled_call_impl is not None and set(module.state_dict()) == names


@pytest.mark.parametrize("loss", ["ntxent", "xbm"])
def test_self_supervised_and_memory_losses_train(loss: str, image_folder: Path, tmp_path: Path) -> None:
    from pytorch_metric_learning.losses import CrossBatchMemory, NTXentLoss

    module, dm = _module(image_folder, tmp_path, f"loss={loss}", "miner=none")
    assert isinstance(module.loss_fn, {"ntxent": NTXentLoss, "xbm": CrossBatchMemory}[loss])
    before = [p.detach().clone() for p in module.embedder.backbone.parameters()]
    trainer = _trainer(max_steps=2, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    assert float(trainer.logged_metrics["train/loss"]) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, module.embedder.backbone.parameters()))
    if loss == "xbm":  # the memory holds the embeddings of both batches (2 x 8 of its 512 places)
        assert module.loss_fn.queue_idx == 16 and module.loss_fn.embedding_memory[:16].norm(dim=1).allclose(
            torch.ones(16), atol=1e-5)
