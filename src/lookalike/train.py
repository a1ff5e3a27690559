"""Training: ``run(cfg)`` seeds, builds data and model from the config, fits, tests and reports."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lookalike.boxes.training import train_boxes
from lookalike.config import config_targets
from lookalike.data.datamodule import RetrievalDataModule, build_datamodule
from lookalike.errors import LookalikeError
from lookalike.files import link_latest
from lookalike.fitting import best_score, build_trainer, finish_loggers
from lookalike.embedder.embed import embed_loader
from lookalike.embedder.file import save_embedder
from lookalike.models.lit_embedder import LitEmbedder, read_checkpoint
from lookalike.models.wise import choose_alpha, interpolated
from lookalike.provenance import provenance
from lookalike.retrieval.metrics import metrics_from_neighbors, per_query_metrics, retrieval_metrics, search
from lookalike.retrieval.grid import retrieval_grid

log = logging.getLogger(__name__)

REPORT_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


def format_report(rows: dict[str, dict[str, float]], title: str) -> str:
    """A plain-text table: one row per model state, one column per metric."""
    width = max(len(title), *(len(r) for r in rows))
    head = f"{title:<{width}}  " + "  ".join(f"{m:>9}" for m in REPORT_METRICS)
    lines = [head, "-" * len(head)]
    for name, metrics in rows.items():
        cells = "  ".join(f"{metrics.get(m, float('nan')):>9.4f}" for m in REPORT_METRICS)
        lines.append(f"{name:<{width}}  {cells}")
    return "\n".join(lines)


def _test_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    return {k.removeprefix("test/"): float(v) for k, v in results[0].items()}


def resume_checkpoint(cfg: DictConfig) -> Path | None:
    """The checkpoint ``ckpt_path`` names; ``last`` is the newest ``checkpoints/last.ckpt`` among the
    task's run folders (this one included), e.g. of a run that was killed."""
    if not cfg.get("ckpt_path"):
        return None
    if cfg.ckpt_path != "last":
        if not Path(cfg.ckpt_path).is_file():
            raise LookalikeError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        return Path(cfg.ckpt_path)
    runs = Path(cfg.paths.output_dir).parent
    found = sorted({p.resolve() for p in runs.glob("*/checkpoints/last.ckpt")}, key=lambda p: p.stat().st_mtime)
    if not found:
        raise LookalikeError(f"ckpt_path=last: no run folder under {runs} has checkpoints/last.ckpt; "
                             "give the path of the checkpoint to resume from instead")
    return found[-1]


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train what ``cfg.runner`` names (:data:`RUNNERS`: the embedder, or the box model with experiment=box) and
    evaluate it; returns the report (test rows, best checkpoint and score, files)."""
    runner = RUNNERS.get(cfg.get("runner", "embedder"))
    if runner is None:
        raise LookalikeError(f"runner={cfg.runner}: choose one of {', '.join(RUNNERS)}")
    return runner(cfg)


def train_embedder(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune the embedder (see the module's text) and report it on the test classes."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_checkpoint(cfg)
    if cfg.get("ckpt_path") == "last":  # continue the interrupted run in its own folder
        cfg.paths.output_dir = str(ckpt_path.parent.parent)
        rank_zero_info(f"resuming {ckpt_path}; the run continues in {cfg.paths.output_dir}")
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")  # first, so a missing or unusable data set stops the run at once
    config = OmegaConf.to_container(cfg, resolve=True)
    run_provenance = provenance(cfg.seed)
    if rank_zero_only.rank == 0:  # under DDP the other processes write nothing
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(config))
        (output_dir / "provenance.json").write_text(json.dumps(run_provenance, indent=2))
    module = LitEmbedder(config, num_train_classes=datamodule.num_train_classes)
    datamodule.preprocessing = module.embedder.preprocessing
    trainer = build_trainer(cfg)
    rank_zero_info(f"train: {datamodule.train_table.describe()}\nval:   {datamodule.val_table.describe()}\n"
                   f"test:  {datamodule.test_table.describe()}")

    rows: dict[str, dict[str, float]] = {}
    headless = cfg.model.head.get("embedding_size") is None  # the embedding is the pooled features as they are
    if cfg.eval.baseline and trainer.is_global_zero:
        loader = datamodule.eval_dataloader(datamodule.test_table, distributed=False)
        data = embed_loader(module.embedder.to(trainer.strategy.root_device), loader, pooled=True,
                            desc="pretrained features")
        rows["backbone pooled features (no training)"] = retrieval_metrics(
            data["embeddings"], data["label"], data["is_query"], data["is_gallery"], cfg.eval.ks, **cfg.knn)
        module.train()
    if cfg.eval.before and cfg.eval.baseline and headless:  # one model: one row
        rank_zero_info("before training: no projection head, so the model as training starts is the backbone's "
                       "pooled features (the table's first row)")
    elif cfg.eval.before:
        rows["before training"] = _test_metrics(trainer.test(module, datamodule=datamodule, verbose=False))

    start = {k: v.detach().cpu().clone() for k, v in module.embedder.state_dict().items()}
    own = config_targets(cfg)  # this run's own classes: its checkpoints may name them
    if ckpt_path is not None:
        read_checkpoint(ckpt_path, trusted=own)  # refused unless it is plain data; Lightning then loads it the same way
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:  # the checkpoint's weights (averaged ones with callbacks=ema), loaded here and not through
        # trainer.test(ckpt_path=...): Lightning's weight-averaging callback would restore the non-averaged ones
        module.load_state_dict(read_checkpoint(best, trusted=own)["state_dict"])
    rows["after training (best checkpoint)" if best else "after training"] = _test_metrics(
        trainer.test(module, datamodule=datamodule, verbose=False))
    selection = choose_weights(module, datamodule, cfg, start, trainer.strategy.root_device)
    if selection and selection["alpha"] != 1:
        rows[selection["name"]] = _test_metrics(trainer.test(module, datamodule=datamodule, verbose=False))

    report = {"test": rows, "best_checkpoint": best, "optimized_metric": cfg.optimized_metric,
              "best_val": best_score(trainer), "test_set": datamodule.test_table.describe(),
              "selection": selection, "duration_s": round(time.time() - started, 1)}
    if trainer.is_global_zero:
        _save_grid(module, datamodule, trainer, output_dir / "retrieval_grid.png")
        # the tested (best) weights as a self-contained embedder file, also a wandb artifact
        embedder_file = save_embedder(module.embedder, output_dir / "embedder.pt", training_config=config,
                                      metrics=report, **run_provenance)
        _log_artifact(trainer, embedder_file, cfg.task_name)
        report["embedder"] = str(embedder_file)
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        if selection:
            print(f"\nValidation classes ({datamodule.val_table.describe()}), the weights exported chosen on "
                  f"{cfg.optimized_metric}:\n{format_report(selection['validation'], 'alpha (0: start, 1: fine-tuned)')}"
                  f"\n{selection['verdict']}")
        print(f"\nTest classes ({report['test_set']}):\n{format_report(rows, 'model')}")
        print(f"\nbest checkpoint: {best or '(none saved)'}\nembedder file:   {embedder_file}"
              f"\nrun folder:      {output_dir}")
    finish_loggers(trainer)
    return report


def choose_weights(module: LitEmbedder, datamodule: RetrievalDataModule, cfg: DictConfig,
                   start: dict[str, Any], device: Any) -> dict[str, Any] | None:
    """Leave in ``module`` the interpolation between the weights training started from (``start``) and the
    fine-tuned ones at ``select.alphas`` (WiSE-FT) that is best on the validation classes' ``optimized_metric``,
    or a larger alpha within ``select.within_se`` standard errors of it (:func:`choose_alpha`); returns the
    choice and every alpha's validation metrics (None with no alpha but 1)."""
    select = cfg.get("select") or {}
    alphas = sorted({float(a) for a in select.get("alphas") or [1.0]})
    if alphas == [1.0]:
        return None
    if not all(0 <= a <= 1 for a in alphas):
        raise LookalikeError(f"select.alphas={alphas}: each alpha must be between 0 (the start) and 1 (fine-tuned)")
    metric = cfg.optimized_metric.removeprefix("val/")
    end = {k: v.detach().clone() for k, v in module.embedder.state_dict().items()}
    loader = datamodule.eval_dataloader(datamodule.val_table, distributed=False)
    scores: dict[float, dict[str, float]] = {}
    per_query: dict[float, torch.Tensor] = {}
    for alpha in alphas:  # every process computes the same choice, so under DDP all export the same weights
        module.embedder.load_state_dict(interpolated(start, end, alpha))
        data = embed_loader(module.embedder.to(device), loader, desc=f"validation, alpha {alpha:g}")
        nb = search(data["embeddings"], data["label"], data["is_query"], data["is_gallery"], max(cfg.eval.ks),
                    **cfg.knn)
        scores[alpha] = metrics_from_neighbors(nb, cfg.eval.ks)
        if metric not in scores[alpha]:
            raise LookalikeError(f"optimized_metric={cfg.optimized_metric} is not a retrieval metric of the "
                                 f"validation classes ({', '.join('val/' + k for k in scores[alpha])}): choose one "
                                 "of those, or set select.alphas=[1.0] to export the fine-tuned weights as they are")
        per_query[alpha] = per_query_metrics(nb, cfg.eval.ks)[metric]
    classes = torch.as_tensor(data["label"])[nb.queries.cpu()]
    within_se = float(select.get("within_se", 0.0))
    chosen, best = choose_alpha(per_query, classes, within_se)
    module.embedder.load_state_dict(interpolated(start, end, chosen))
    module.train()
    if chosen == 0:
        name, verdict = "chosen: the start (alpha 0)", (
            f"Fine-tuning did not beat the weights it started from on the validation classes ({metric} "
            f"{scores[0.0][metric]:.4f} against {scores[alphas[-1]][metric]:.4f} fine-tuned): the embedder exported "
            "is the starting (pretrained) model.")
    else:
        name = f"chosen: WiSE-FT alpha {chosen:g}" if chosen != 1 else "chosen: fine-tuned (alpha 1)"
        verdict = f"Exported: alpha {chosen:g} ({metric} {scores[chosen][metric]:.4f} on the validation classes)."
        if chosen != best:
            verdict += (f" Alpha {best:g} scored higher ({scores[best][metric]:.4f}), by less than {within_se:g} "
                        f"standard error(s) of the difference over the {len(torch.unique(classes))} validation "
                        "classes: "
                        "too little to tell from chance (select.within_se=0 takes the highest score).")
    return {"metric": metric, "alpha": chosen, "best_alpha": best, "name": name, "verdict": verdict,
            "validation": {f"{a:g}": m for a, m in scores.items()}}


def _save_grid(module: LitEmbedder, datamodule: RetrievalDataModule, trainer: L.Trainer, path: Path) -> None:
    """The test retrieval grid of the final model, as a file and in loggers that take images (wandb)."""
    nb = module.last_neighbors.get("test")
    if nb is None or nb.hits.shape[1] == 0:  # no query had another image to find
        return
    table = datamodule.test_table
    retrieval_grid(table.paths, table.label_names(), nb, seed=0).save(path)
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key="test/retrieval_grid", images=[str(path)])


def _log_artifact(trainer: L.Trainer, path: Path, name: str) -> None:
    """Log the embedder file as a model artifact in loggers that keep artifacts (wandb)."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            artifact = wandb.Artifact(f"{name}-embedder", type="model")
            artifact.add_file(str(path))
            logger.experiment.log_artifact(artifact)


RUNNERS = {"embedder": train_embedder, "box": train_boxes}


def train_task(cfg: DictConfig) -> float | None:
    """Hydra's task: run, and return the best value of ``optimized_metric`` (what sweepers optimise).

    In a multirun (sweep) a trial that fails is recorded in its folder (``error.txt``) and returns
    NaN, which Optuna records as a failed trial; the sweep goes on.
    """
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        try:
            return run(cfg)["best_val"]
        except Exception as e:  # any failure of one trial, reported where the trial ran
            Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.paths.output_dir) / "error.txt").write_text(f"{type(e).__name__}: {e}\n")
            log.error("trial failed (%s: %s); the sweep continues", type(e).__name__, e)
            return float("nan")
    report = run(cfg)
    if rank_zero_only.rank == 0:
        link_latest(cfg.paths.output_dir)
    return report["best_val"]
