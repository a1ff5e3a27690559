"""The peer: a plain pytorch-metric-learning training loop, as a user would write it without lookalike.

timm backbone (ImageNet weights) + randomly initialised linear head, torchvision-style PIL loading and
transforms (RandomResizedCrop + flip), `MPerClassSampler`, semi-hard `TripletMarginMiner` +
`TripletMarginLoss`, Adam with one learning rate for the backbone and one for the head, BatchNorm
in training mode, all training classes, the last epoch's weights. Only the data lists (file paths,
labels), the offline ImageNet weights and the retrieval metrics come from lookalike, so that the test
protocol is the same as for `train.py`.

    python experiments/plain_pml_loop.py --data flowers17 --root ../shared/datasets/flowers17 \
        --image-size 128 --epochs 6 --seed 0 --json /tmp/plain.json
    python experiments/plain_pml_loop.py --data omniglot --root ../shared/datasets/omniglot_small ...

Throughput (experiments/bench_throughput.py): any class-per-folder tree, a fixed number of steps, timed after
a warm-up, no test:

    python experiments/plain_pml_loop.py --data folder --root DIR --model resnet50 --image-size 224 \
        --batch-size 256 --precision bf16 --workers 15 --max-steps 160 --warmup 40 --json /tmp/peer.json
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_metric_learning import losses, miners, samplers
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from common import splits

from lookalike.models.backbone import load_offline_weights
from lookalike.retrieval.metrics import retrieval_metrics


class Images(Dataset):
    def __init__(self, paths: list[str], labels, transform) -> None:
        self.paths, self.labels, self.transform = paths, [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (so that a clock reading covers it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["flowers17", "omniglot", "folder"], required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--model", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--m", type=int, default=4)
    p.add_argument("--lr-backbone", type=float, default=1e-4)
    p.add_argument("--lr-head", type=float, default=1e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=["32", "bf16"], default="32", help="bf16: autocast on the GPU")
    p.add_argument("--random-init", action="store_true", help="no ImageNet weights (throughput runs)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps and skip the test (throughput runs)")
    p.add_argument("--warmup", type=int, default=20, help="steps before the throughput clock starts")
    p.add_argument("--json", help="write the test metrics (or the throughput) here")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = splits(args.data, args.root)
    backbone = timm.create_model(args.model, pretrained=False, num_classes=0)
    if not args.random_init:
        load_offline_weights(backbone, args.model)
    head = nn.Linear(backbone.num_features, args.embedding_size)
    model = nn.Sequential(backbone, head).to(device)

    cfg = timm.data.resolve_model_data_config(backbone)
    normalize = [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    train_tf = T.Compose([T.RandomResizedCrop(args.image_size), T.RandomHorizontalFlip(), *normalize])
    eval_tf = T.Compose([T.Resize(int(args.image_size / cfg["crop_pct"])), T.CenterCrop(args.image_size), *normalize])

    sampler = samplers.MPerClassSampler(data.train.labels, m=args.m, batch_size=args.batch_size,
                                        length_before_new_iter=len(data.train))
    train_loader = DataLoader(Images(data.train.paths, data.train.labels, train_tf), batch_size=args.batch_size,
                              sampler=sampler, num_workers=args.workers, drop_last=True)
    loss_fn = losses.TripletMarginLoss(margin=0.2)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    optimizer = torch.optim.Adam([{"params": backbone.parameters(), "lr": args.lr_backbone},
                                  {"params": head.parameters(), "lr": args.lr_head}])

    started, seen, step, clock = time.time(), 0, 0, None
    bf16 = args.precision == "bf16" and device.type == "cuda"
    epochs = args.epochs if args.max_steps is None else 10**9
    for epoch in range(epochs):
        model.train()
        for images, labels in train_loader:
            if step == args.warmup and args.max_steps is not None:
                sync(device)
                clock, timed = time.perf_counter(), 0
            images, labels = images.to(device), labels.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                emb = F.normalize(model(images), dim=-1)
            emb = emb.float()
            loss = loss_fn(emb, labels, miner(emb, labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen, step = seen + len(images), step + 1
            if clock is not None:
                timed += len(images)
            if step == args.max_steps:
                break
        print(f"epoch {epoch}: loss {loss.item():.4f}, {seen / (time.time() - started):.1f} training images/s")
        if step == args.max_steps:
            sync(device)
            rate = timed / (time.perf_counter() - clock)
            peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            print(f"steady state after {args.warmup} steps: {rate:.1f} training images/s")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"args": vars(args), "images_per_s": rate, "timed_images": timed,
                               "gpu_peak_gb": peak}, f)
            return

    model.eval()
    test_loader = DataLoader(Images(data.test.paths, data.test.labels, eval_tf), batch_size=128,
                             num_workers=args.workers)
    with torch.inference_mode():
        emb = torch.cat([F.normalize(model(x.to(device)), dim=-1).float().cpu() for x, _ in test_loader])
    metrics = retrieval_metrics(emb, torch.as_tensor(data.test.labels), ks=(1, 2, 4, 8))
    print(json.dumps(metrics, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "test": metrics, "duration_s": round(time.time() - started, 1)}, f)


if __name__ == "__main__":
    main()
