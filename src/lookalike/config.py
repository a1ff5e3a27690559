"""Hydra configs: where they live (inside the installed package, or the repository's conf/ folder), composing
them, the command-line entry, and building objects from them with one-line errors."""

from __future__ import annotations

import functools
import os
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import hydra
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lookalike.errors import LookalikeError

FALLBACK_SIZE = 224  # the input size of a backbone timm has no pretrained configuration for


def backbone_size(name: str) -> int:
    """A timm backbone's own (pretrained) input resolution, from its configuration: nothing is built or
    downloaded. Configs write it ``${backbone_size:${model.backbone.name}}``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(str(name))
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else FALLBACK_SIZE


OmegaConf.register_new_resolver("backbone_size", backbone_size, replace=True)


def workers(most: int) -> int:
    """Loader processes: ``most``, but no more than the cores this process may run on (more only compete for them;
    PyTorch warns). Configs write it ``${workers:8}``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(int(most), cores))


OmegaConf.register_new_resolver("workers", workers, replace=True)


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "conf"


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """The config ``python train.py OVERRIDES`` (or ``lookalike evaluate`` for ``"eval"``) would run, for
    use from Python: ``lookalike.train.run(compose("train", ["paths.output_dir=out"]))``. Keys that
    refer to Hydra's run folder need ``paths.output_dir`` set."""
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=overrides or [])


def one_log() -> None:
    """Each message once, in the job's one format (conf/hydra/default.yaml: the console and the run folder's
    log): Lightning's loggers, which print through handlers of their own when imported before logging is set up,
    hand their records to the root logger's handlers instead."""
    import lightning.pytorch  # noqa: F401 (importing it adds the handlers taken off here)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def hydra_main(config_name: str, task: Callable[[DictConfig], Any], argv: list[str] | None = None,
               prog: str | None = None) -> None:
    """Run ``task`` on the config Hydra composes from ``config_name`` and the command line (``argv``, default
    ``sys.argv[1:]``; ``prog`` names the program); a LookalikeError ends the program with its message alone
    (exit status 2)."""
    if argv is not None:  # python train.py ...: sys.argv stays, as relaunched DDP processes need it
        sys.argv = [prog or sys.argv[0], *argv]

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def _main(cfg: DictConfig) -> Any:
        one_log()
        try:
            return task(cfg)
        except LookalikeError as e:
            print(f"lookalike: error: {e}", file=sys.stderr)
            sys.exit(2)

    _main()


def build(cfg: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with a one-line error naming the config group (``what``)."""
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, LookalikeError):  # the target's own clear message, without Hydra's wrapping
            raise e.__cause__ from None
        raise LookalikeError(f"Cannot build {what} from its config: {e}") from e


# Extra ``_target_``s a user trusts in files (their own loss or data source, comma-separated): the environment, not
# a file, says so.
TRUSTED_TARGETS_ENV = "LOOKALIKE_TRUSTED_TARGETS"


def _targets_in(node: Any) -> Iterator[Any]:
    """Every ``_target_`` value in a (nested) plain-data config."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _targets_in(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _targets_in(value)


@functools.cache
def known_targets() -> frozenset[str]:
    """The ``_target_``s that lookalike's own config groups name (the allow-list for configs read from files)."""
    found: set[str] = set()
    for path in config_dir().rglob("*.yaml"):
        found.update(t for t in _targets_in(yaml.safe_load(path.read_text())) if isinstance(t, str))
    return frozenset(found)


def config_targets(cfg: Any) -> frozenset[str]:
    """The ``_target_``s a config names (the user's own, for :func:`trusted_config`'s ``also``)."""
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return frozenset(t for t in _targets_in(plain) if isinstance(t, str))


def trusted_config(config: Any, source: str | Path, also: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A training config read from a file (a checkpoint's, an embedder or box file's), resolved to plain data, once
    every ``_target_`` in it is one that lookalike's configs name, ``$LOOKALIKE_TRUSTED_TARGETS`` lists, or
    ``also`` holds (those of the user's own config, for a run reading its own checkpoints): a file is data, never
    code, so a config naming any other callable is refused with one message, before anything is built from it."""
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    except Exception as e:  # noqa: BLE001 - OmegaConf's errors for malformed configs and interpolations
        raise LookalikeError(f"'{source}' holds a training config lookalike cannot read ({e})") from e
    if not isinstance(resolved, dict):
        raise LookalikeError(f"'{source}' holds a training config lookalike cannot read (not a mapping)")
    allowed = known_targets() | also | {t.strip() for t in os.environ.get(TRUSTED_TARGETS_ENV, "").split(",")
                                        if t.strip()}
    for target in _targets_in(resolved):
        if target not in allowed:
            raise LookalikeError(
                f"'{source}' names code to run ({str(target)[:200]!r}) that lookalike's configs do not name, so it "
                f"was not loaded: a file is data, never code. If you wrote that class yourself and trust the file, "
                f"list it in ${TRUSTED_TARGETS_ENV}")
    return resolved
