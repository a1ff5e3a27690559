"""Benchmark: training and embedding images/s of lookalike against an upper bound and a peer, in one run.

For each configuration (model, resolution, batch):
  upper bound  the same embedder's forward + backward + fused AdamW step on random tensors already on the
               device (bf16 autocast and channels_last on a GPU; BatchNorm statistics frozen as in
               lookalike's defaults), with its model FLOPs utilisation (MFU)
  lookalike    `python train.py` end to end (JPEG decoding, augmentation, PK sampler, miner, loss, EMA,
               logging) on a folder of generated ~500 px JPEGs, timed over steady-state steps by a callback
  peer         experiments/plain_pml_loop.py (PIL + torchvision loading, PML miner and loss) on the same data,
               batch and precision
  loader alone lookalike's training DataLoader with the lookalike row's config and no model: whether the
               loader or the model sets the pace (also for data switches such as the resize cache)
and for embedding: the forward pass on random tensors against `lookalike.retrieval.embed_files` over the
JPEGs (what `lookalike index build` runs). Switches (`--switches`) rerun lookalike with one setting changed.
Each measurement runs in its own process.

    python experiments/bench_throughput.py --out experiments/results/throughput.md          # the 2-core CPU
    python experiments/bench_throughput.py --gpu --switches --out experiments/results/throughput.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from multiprocessing import Pool
from pathlib import Path

import lightning as L
import cv2
import numpy as np
import torch
from PIL import Image

from common import machine, report

ROOT = Path(__file__).resolve().parent.parent
# (name, timm model, lookalike model config, image size, batch size)
GPU_CONFIGS = [("resnet50 224px b128", "resnet50", "resnet50", 224, 128),
               ("resnet50 224px b256", "resnet50", "resnet50", 224, 256),
               ("lite0 224px b256", "tf_efficientnet_lite0", "lite0", 224, 256)]
CPU_CONFIGS = [("lite0 128px b32", "tf_efficientnet_lite0", "lite0", 128, 32),
               ("lite0 224px b32", "tf_efficientnet_lite0", "lite0", 224, 32)]
# lookalike with one setting changed, on the GPU's resnet50 batch-256 configuration
SWITCHES = {
    "channels_last off": ["model.channels_last=false"],
    "fused AdamW off (foreach)": ["optim.optimizer.fused=false"],
    "non-finite check off": ["optim.max_nonfinite_steps=0"],
    "EMA off": ["callbacks=default"],
    "torch.compile on": ["model.compile=true"],
    "resize cache 256 px": ["data.resize_cache=256"],
    "dense semi-hard triplet loss": ["loss=triplet_dense", "miner=none"],
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense tensor-core peaks


# -- data -------------------------------------------------------------------------------------------
def _photo(args: tuple[Path, int]) -> int:
    """One photo-like JPEG: smooth colour field, shapes, sensor noise; ~500 x 375 px, quality 90."""
    path, seed = args
    rng = np.random.default_rng(seed)
    w, h = (500, 375) if seed % 3 else (375, 500)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    image = np.asarray(field, dtype=np.float32)
    for _ in range(6):  # a few objects with edges
        x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
        x1, y1 = x0 + rng.integers(30, w // 2), y0 + rng.integers(30, h // 2)
        image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * 0.5 + rng.integers(0, 256, 3) * 0.5
    image += rng.normal(0, 8, image.shape)
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path.stat().st_size


def make_images(root: Path, classes: int, per_class: int) -> dict:
    """A class-per-folder tree of generated JPEGs (made once); returns its size and decode speed."""
    jobs = [(root / f"c{c:04d}" / f"{i:03d}.jpg", c * per_class + i) for c in range(classes) for i in range(per_class)]
    todo = [j for j in jobs if not j[0].exists()]
    for c in range(classes):
        (root / f"c{c:04d}").mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(_photo, todo, chunksize=64)
    sizes = [p.stat().st_size for p, _ in jobs]
    t0 = time.perf_counter()
    sample = [p for p, _ in jobs[:200]]
    for p in sample:
        Image.open(p).convert("RGB").load()
    return {"images": len(jobs), "classes": classes, "mean_kb": float(np.mean(sizes)) / 1024,
            "pil_decode_per_core": len(sample) / (time.perf_counter() - t0)}


# -- the lookalike run's clock ----------------------------------------------------------------------
class StepTimer(L.Callback):
    """Training images/s between step ``warmup`` and the end of the run, the first step's duration
    (compile time when compiling) and peak GPU memory, written as JSON to ``out``."""

    def __init__(self, warmup: int, out: str):
        self.warmup, self.out = warmup, out
        self.started: float | None = None
        self.first_step_s: float | None = None
        self.clock: float | None = None
        self.images = 0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.started is None:
            self.started = time.perf_counter()
        if trainer.global_step == self.warmup and self.clock is None:
            self._sync(module)
            self.clock = time.perf_counter()
        if self.clock is not None:
            self.images += len(batch["label"])

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self.first_step_s is None:
            self._sync(module)
            self.first_step_s = time.perf_counter() - self.started

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._sync(module)
        seconds = time.perf_counter() - self.clock
        peak = torch.cuda.max_memory_allocated() / 2**30 if module.device.type == "cuda" else None
        Path(self.out).write_text(json.dumps({"images_per_s": self.images / seconds, "timed_images": self.images,
                                              "first_step_s": self.first_step_s, "gpu_peak_gb": peak}))


# -- measurements (each in its own process) ---------------------------------------------------------
def _embedder(model: str, size: int):
    from lookalike.models.embedder import Embedder

    return Embedder({"name": model, "pretrained": False}, {"embedding_size": None}, size)


def upper_bound(model: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """Training steps of the bare model on random tensors on the device: forward, backward, fused AdamW."""
    from torch.utils.flop_counter import FlopCounterMode

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    net = _embedder(model, size).to(device).train()
    for m in net.backbone.modules():  # BatchNorm statistics frozen, as lookalike's default optim.freeze_bn
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    fmt = torch.channels_last if gpu else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=True)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            loss = net(x).float().sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x[:2])
    # training = 3 x the forward's FLOPs (the counter's own backward figure is wrong for depthwise convolutions)
    flops = 3 * counter.get_total_flops() / 2 * batch
    rate = _timed(step, steps, warmup, batch, gpu)
    name = torch.cuda.get_device_name() if gpu else ""
    peak = next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    return {"images_per_s": rate, "gflop_per_image": flops / batch / 1e9,
            "mfu": flops / batch * rate / peak if peak else None,
            "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if gpu else None}


def inference_bound(model: str, size: int, batch: int, steps: int, warmup: int) -> dict:
    """Forward passes of the bare model on random tensors on the device (bf16, channels_last on a GPU)."""
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    fmt = torch.channels_last if gpu else torch.contiguous_format
    net = _embedder(model, size).to(device).eval().to(memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

    @torch.inference_mode()
    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=gpu):
            net(x)

    return {"images_per_s": _timed(step, steps, warmup, batch, gpu)}


def _timed(step, steps: int, warmup: int, batch: int, gpu: bool) -> float:
    for _ in range(warmup):
        step()
    if gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if gpu:
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def embed_folder(model: str, size: int, batch: int, images: Path, workers: int, limit: int) -> dict:
    """lookalike's catalogue embedding (`embed_files`) over JPEGs, timed after the first batch."""
    from lookalike.data.listing import labelled_images
    from lookalike.embedder.embed import embed_files

    paths = [item["path"] for item in labelled_images(images)[:limit]]
    done, t0 = 0, None
    for positions, _, _ in embed_files(_embedder(model, size), paths, batch_size=batch, num_workers=workers,
                                       progress=False):
        if t0 is None:
            t0 = time.perf_counter()
        else:
            done += len(positions)
    return {"images_per_s": done / (time.perf_counter() - t0)}


def _decode_augment(path: str) -> int:
    from lookalike.data.images import load_rgb
    from lookalike.data.transforms import train_transform
    import albumentations as A

    cv2.setNumThreads(1)
    augment = A.Compose([A.RandomResizedCrop(size=(224, 224), scale=(0.5, 1.0)), A.HorizontalFlip(),
                         A.ColorJitter(0.3, 0.3, 0.3, 0.05, p=0.8)])
    return train_transform(augment, {})(image=load_rgb(path))["image"].numel()


def decode_scaling(images: Path, processes: int, resize_cache: int | None, count: int = 3000) -> float:
    """Images/s of decoding + the default augmentation in ``processes`` processes (no model, no loader),
    from the JPEGs or from their ``data.resize_cache`` copies."""
    paths = [str(p) for p in sorted(images.rglob("*.jpg"))[:count]]
    if resize_cache:
        from lookalike.data.cache import resized_table
        from lookalike.data.table import ImageTable

        table = ImageTable(paths, np.zeros(len(paths), dtype=np.int64))
        paths = resized_table(table, resize_cache, images.parent / f"{images.name}-cache", os.cpu_count() or 1).paths
    with Pool(processes) as pool:
        pool.map(_decode_augment, paths[:processes * 4])  # start-up
        t0 = time.perf_counter()
        pool.map(_decode_augment, paths, chunksize=16)
        return len(paths) / (time.perf_counter() - t0)


def _child(kind: str, args: list[str], timeout: int, env: dict | None = None, result: Path | None = None) -> dict:
    """Run one measurement in its own process; its result is the JSON file ``result`` if given, else the
    JSON on its last output line."""
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"{kind}: over {timeout} s"}
    if done.returncode != 0:
        lines = [s for s in done.stderr.strip().splitlines() if s.strip() and "HYDRA_FULL_ERROR" not in s]
        tail = (lines or ["?"])[-1]
        return {"error": f"{kind}: {tail[:300]}"}
    if result is not None:
        return json.loads(result.read_text()) if result.exists() else {"error": f"{kind}: no {result.name}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _train_overrides(cfg: tuple, images: Path, workers: int, steps: int, gpu: bool, tmp: str) -> list[str]:
    """``train.py`` overrides of the lookalike rows: the JPEG folder, ``steps`` steps, no validation."""
    _, _, model_cfg, size, batch = cfg
    return ["data=image_folder", f"data.root={images}", "data.source.train_classes=0.9",
            "data.val_classes=0.1", f"data.batch_size={batch}", f"data.num_workers={workers}",
            f"model={model_cfg}", "model.backbone.pretrained=false", f"model.image_size={size}",
            f"trainer={'gpu' if gpu else 'cpu'}", f"+trainer.max_steps={steps}", "trainer.max_epochs=1000",
            "+trainer.limit_val_batches=0", "eval.baseline=false", "eval.before=false", "logger=none",
            f"paths.cache_dir={tmp}/cache", f"paths.output_dir={tmp}/run", "task_name=throughput"]


def lookalike_run(cfg: tuple, images: Path, workers: int, steps: int, warmup: int, gpu: bool,
                  extra: list[str], timeout: int) -> dict:
    """``python train.py`` on the JPEG folder for ``steps`` steps (no validation), clocked by StepTimer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "timer.json"
        args = ["train.py", *_train_overrides(cfg, images, workers, steps, gpu, tmp), f"hydra.run.dir={tmp}/run",
                "+callbacks.step_timer._target_=bench_throughput.StepTimer",
                f"+callbacks.step_timer.warmup={warmup}", f"+callbacks.step_timer.out={out}", *extra]
        paths = [str(ROOT / "experiments"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        t0 = time.perf_counter()
        result = _child("train.py", args, timeout, env, result=out)
        result["run_s"] = time.perf_counter() - t0
        return result


def loader_alone(overrides: list[str], model: str, size: int, steps: int, warmup: int) -> dict:
    """Images/s of lookalike's training DataLoader with no model behind it (the config of a lookalike run):
    what the loader workers can deliver at most."""
    from lookalike.config import compose
    from lookalike.data.datamodule import build_datamodule

    datamodule = build_datamodule(compose("train", overrides), _embedder(model, size).preprocessing)
    loader = datamodule.train_dataloader()
    done, t0, step = 0, 0.0, 0
    while step <= warmup + steps:  # over as many epochs as it takes, as training does
        for batch in loader:
            if step == warmup:
                t0 = time.perf_counter()
            elif step > warmup:
                done += len(batch["label"])
            step += 1
            if step > warmup + steps:
                break
    return {"images_per_s": done / (time.perf_counter() - t0)}


def loader_run(cfg: tuple, images: Path, workers: int, steps: int, warmup: int, gpu: bool, extra: list[str],
               timeout: int) -> dict:
    _, model, _, size, batch = cfg
    with tempfile.TemporaryDirectory() as tmp:
        return _child("loader", [str(Path(__file__).relative_to(ROOT)), "--steps", str(warmup + steps), "--warmup",
                                 str(warmup), "--child", "loader", model, str(size), str(batch),
                                 *_train_overrides(cfg, images, workers, steps, gpu, tmp), *extra], timeout)


def peer_run(cfg: tuple, images: Path, workers: int, steps: int, warmup: int, gpu: bool, timeout: int) -> dict:
    _, model, _, size, batch = cfg
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peer.json"
        return _child("peer", ["experiments/plain_pml_loop.py", "--data", "folder", "--root", str(images),
                                 "--model", model, "--image-size", str(size), "--batch-size", str(batch),
                                 "--precision", "bf16" if gpu else "32", "--workers", str(workers),
                                 "--max-steps", str(steps), "--warmup", str(warmup), "--random-init", "--json", str(out)],
                      timeout, result=out)


# -- report -----------------------------------------------------------------------------------------
def _rate(r: dict) -> str:
    return "failed: " + r["error"] if "error" in r else f"{r['images_per_s']:,.0f}"


def _ratio(a: dict, b: dict) -> str:
    return f"{a['images_per_s'] / b['images_per_s']:.2f}" if "error" not in a and "error" not in b else "-"


def _gb(r: dict) -> str:
    return f"{r['gpu_peak_gb']:.1f}" if r.get("gpu_peak_gb") else "-"


def write_report(rows: list[dict], switches: list[dict], data: dict, a: argparse.Namespace) -> None:
    lines = [f"\n## {date.today()}: {'GPU' if a.gpu else 'CPU'}\n", f"Machine: {machine()}  ",
             f"Command: `python experiments/bench_throughput.py {' '.join(sys.argv[1:])}`  ",
             f"Data: {data['images']:,} generated JPEGs (~500 x 375 px, {data['mean_kb']:.0f} KB on average, "
             f"{data['pil_decode_per_core']:.0f} decoded/s on one core with PIL), {data['classes']} classes; "
             f"{a.workers} loader workers; lookalike {a.steps} steps timed after {a.warmup}, peer {a.peer_steps} "
             f"after {a.peer_warmup}; precision {'bf16-mixed, channels_last' if a.gpu else 'fp32'}.\n"]
    full = [r for r in rows if "upper" in r]
    if full:
        lines += ["### Training images/s\n",
                  "| configuration | upper bound | MFU | lookalike | lookalike / upper | peer | lookalike / peer "
                  "| loader alone | GPU peak GB (upper / lookalike / peer) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in full:
            up, lk, peer = r["upper"], r["lookalike"], r["peer"]
            mfu = f"{up['mfu']:.0%}" if up.get("mfu") else "-"
            lines.append(f"| {r['name']} | {_rate(up)} | {mfu} | {_rate(lk)} | {_ratio(lk, up)} | {_rate(peer)} | "
                         f"{_ratio(lk, peer)} | {_rate(r['loader'])} | {_gb(up)} / {_gb(lk)} / {_gb(peer)} |")
    embedded = [r for r in rows if "infer" in r]
    if embedded:
        lines += ["\n### Embedding images/s\n", "| configuration | upper bound (random tensors) | lookalike "
                  "`embed_files` (JPEG files) | ratio |", "|---|---:|---:|---:|"]
        for r in embedded:
            lines.append(f"| {r['name'].split(' b')[0]} b{a.embed_batch} | {_rate(r['infer'])} | "
                         f"{_rate(r['embed'])} | {_ratio(r['embed'], r['infer'])} |")
    if switches:
        default = rows[[r["name"] for r in rows].index(a.switch_config)]
        base = default["lookalike"]
        lines += [f"\n### One switch at a time ({a.switch_config}, lookalike)\n",
                  "| setting | images/s | vs default | first step (s) | run (s) | loader alone |",
                  "|---|---:|---:|---:|---:|---:|",
                  f"| default | {_rate(base)} | 1.00 | {base.get('first_step_s') or 0:.1f} | "
                  f"{base.get('run_s', 0):.0f} | {_rate(default['loader'])} |"]
        for s in switches:
            r = s["result"]
            lines.append(f"| {s['name']} (`{' '.join(SWITCHES[s['name']])}`) | {_rate(r)} | {_ratio(r, base)} | "
                         f"{r.get('first_step_s') or 0:.1f} | {r.get('run_s', 0):.0f} | "
                         f"{_rate(s['loader']) if 'loader' in s else '-'} |")
    report(lines, a.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help="the GPU configurations (else the CPU ones)")
    p.add_argument("--configs", nargs="+", help="names of configurations to run (default: all)")
    p.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-bench-jpegs")
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--per-class", type=int, default=60)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    # long enough that the loader's prefetched batches (2 per worker) are used up before the clock starts
    p.add_argument("--steps", type=int, default=180)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--peer-steps", type=int, default=80, help="the peer is loader-bound: its queue drains fast")
    p.add_argument("--peer-warmup", type=int, default=40)
    p.add_argument("--embed-batch", type=int, default=256)
    p.add_argument("--embed-images", type=int, default=8000)
    p.add_argument("--switches", action="store_true", help="also rerun lookalike with each of SWITCHES")
    p.add_argument("--switches-only", action="store_true", help="only lookalike's default and SWITCHES")
    p.add_argument("--switch-config", default="resnet50 224px b256")
    p.add_argument("--switch-names", nargs="+", help="only these SWITCHES (and the default run if one is 'default')")
    p.add_argument("--decode-scaling", type=int, nargs="+", metavar="PROCESSES",
                   help="only measure decode + default augmentation images/s with these numbers of processes")
    p.add_argument("--resize-cache", type=int, help="--decode-scaling from data.resize_cache copies of this size")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--jsonl", help="append every measurement here as it is made")
    p.add_argument("--out", help="append a Markdown section with the results to this file")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, model, size, batch = a.child[0], a.child[1], int(a.child[2]), int(a.child[3])
        if kind == "loader":
            print(json.dumps(loader_alone(a.child[4:], model, size, a.steps - a.warmup, a.warmup)))
        elif kind == "upper":
            print(json.dumps(upper_bound(model, size, batch, a.steps - a.warmup, 5)))
        elif kind == "infer":
            print(json.dumps(inference_bound(model, size, batch, 30, 5)))
        else:
            print(json.dumps(embed_folder(model, size, batch, a.images, a.workers, a.embed_images)))
        return

    def log(entry: dict) -> None:
        print(json.dumps(entry), flush=True)
        if a.jsonl:
            with open(a.jsonl, "a") as f:
                f.write(json.dumps(entry) + "\n")

    data = make_images(a.images, a.classes, a.per_class)
    log({"data": data})
    if a.decode_scaling:
        for processes in a.decode_scaling:
            log({"processes": processes, "resize_cache": a.resize_cache,
                 "decode_augment_images_per_s": decode_scaling(a.images, processes, a.resize_cache)})
        return
    configs = [c for c in (GPU_CONFIGS if a.gpu else CPU_CONFIGS) if not a.configs or c[0] in a.configs]
    me = [str(Path(__file__).relative_to(ROOT))]
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--images", str(a.images),
              "--workers", str(a.workers), "--embed-images", str(a.embed_images)]
    rows = []
    default_runs = not (a.switches_only and a.switch_names and "default" not in a.switch_names)
    for cfg in configs if default_runs else []:
        name, model, _, size, batch = cfg
        row = {"name": name, "lookalike": lookalike_run(cfg, a.images, a.workers, a.steps, a.warmup, a.gpu, [],
                                                        a.timeout),
               "loader": loader_run(cfg, a.images, a.workers, a.steps, a.warmup, a.gpu, [], a.timeout)}
        if not a.switches_only:
            row["upper"] = _child("upper", [*me, *common, "--child", "upper", model, str(size), str(batch)], a.timeout)
            row["peer"] = peer_run(cfg, a.images, a.workers, a.peer_steps, a.peer_warmup, a.gpu, a.timeout)
        if not a.switches_only and batch == max(c[4] for c in configs if c[1] == model):  # embedding: per model
            row["infer"] = _child("infer", [*me, *common, "--child", "infer", model, str(size), str(a.embed_batch)],
                                  a.timeout)
            row["embed"] = _child("embed", [*me, *common, "--child", "embed", model, str(size), str(a.embed_batch)],
                                  a.timeout)
        log(row)
        rows.append(row)
    switches = []
    if a.switches or a.switches_only:
        cfg = next(c for c in configs if c[0] == a.switch_config)
        for name, overrides in SWITCHES.items():
            if a.switch_names and name not in a.switch_names:
                continue
            result = lookalike_run(cfg, a.images, a.workers, a.steps, a.warmup, a.gpu, overrides, a.timeout)
            switches.append({"name": name, "result": result})
            if any(o.startswith("data.") for o in overrides):  # a data switch: what the loader alone delivers
                switches[-1]["loader"] = loader_run(cfg, a.images, a.workers, a.steps, a.warmup, a.gpu, overrides,
                                                    a.timeout)
            log(switches[-1])
    if rows:
        write_report(rows, switches, data, a)


if __name__ == "__main__":
    main()
