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

from lookalike.data.image_folder import image_folder
from lookalike.data.omniglot import omniglot
from lookalike.models.backbone import load_offline_weights
from lookalike.retrieval.metrics import retrieval_metrics


class Images(Dataset):
    def __init__(self, paths: list[str], labels, transform) -> None:
        self.paths, self.labels, self.transform = paths, [int(y) for y in labels], transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def splits(name: str, root: str):
    """The zero-shot splits of the issue: flowers17 classes 01-08 / 09-17; Omniglot small1-only / small2-only."""
    if name == "flowers17":
        return image_folder(root, train_classes=8)
    return omniglot(root, ["images_background_small1"], ["images_background_small2"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["flowers17", "omniglot"], required=True)
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
    p.add_argument("--json", help="write the test metrics here")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = splits(args.data, args.root)
    backbone = timm.create_model(args.model, pretrained=False, num_classes=0)
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

    started, seen = time.time(), 0
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            images, labels = images.to(device), labels.to(device)
            emb = F.normalize(model(images), dim=-1)
            loss = loss_fn(emb, labels, miner(emb, labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(images)
        print(f"epoch {epoch}: loss {loss.item():.4f}, {seen / (time.time() - started):.1f} training images/s")

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
