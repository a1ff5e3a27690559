"""The local-feature stage at catalogue scale: the descriptor vote index among up to a million items.

Distractor items have realistic local features without decoding millions of images: each is a real picture's
features (flowers17's 1,360 photos: no DVD cover among them) perturbed, so that
no two are alike: its positions moved by a random similarity, its RootSIFT descriptors jittered (Gaussian noise of
``--noise`` of their norm) and a quarter of them swapped for another source picture's, as many per picture as the
real ones. The 100 real DVD covers are items 0-99; the 400 phone photos (canon, droid, e63, palm) are the queries.

Stage ``votes`` measures the vote index alone, as :class:`lookalike.verification.votes.DescriptorVotes` builds and
searches it, for each index type given (FAISS factory strings; ``auto``: what :func:`vote_factory` picks for the
size) at each catalogue size: training and adding time, bytes, milliseconds per photo (its 400 descriptors voting)
and whether the photo's cover is the first candidate, among the first 5, and among the first 50 that the verified
search goes on to verify (``recall@1/@5/@50``). One line per size and type is appended to
``results/scale_runs.jsonl`` as it finishes; a size and type already there is skipped (resumable).

Stage ``search`` measures the whole verified search, as `lookalike search` runs it, in a catalogue of the 100 covers
(built by `lookalike index build`, calibrated on themselves) and ``items - 100`` distractors, each with its
perturbed features and its source picture's embedding (``--embedder``'s) jittered: bytes on disk, build times,
then in a process of its own (``measure``) recall@1/@5 of the photos, milliseconds per photo (embedding, local
features, search) and that process's peak memory; ``--backend milvus``: a Milvus Lite database instead of the
catalogue file, or with ``--milvus-uri`` collections on that Milvus server (the server's memory after the search,
and with ``--milvus-data`` its folder's bytes, reported too). The catalogue is kept in ``--work`` (or on the server)
and reused; one line per size appended as it finishes.

    python experiments/scale.py votes --dvd ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \
        --items 10000 100000 --factories auto IVF4096,PQ32 --work /tmp/scale
    python experiments/scale.py search --dvd ../shared/datasets/dvd_covers --flowers ../shared/datasets/flowers17 \
        --embedder lite0.pt --items 10000 100000 --work /tmp/scale
    python experiments/scale.py --report
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from common import record
from lookalike.catalogue.backends import build_catalogue, open_catalogue
from lookalike.catalogue.base import Catalogue
from lookalike.catalogue.build import BuildOptions
from lookalike.catalogue.file import FileCatalogue
from lookalike.catalogue.local import local_codes, photo_features
from lookalike.catalogue.milvus import connect, disconnect
from lookalike.catalogue.query import SearchOptions, search_catalogue
from lookalike.data.images import load_rgb
from lookalike.embedder.file import embedder_from_payload, read_embedder_file
from lookalike.errors import LookalikeError
from lookalike.retrieval.knn import FaissIndex
from lookalike.verification.codes import DescriptorCodes
from lookalike.verification.features import DESCRIPTOR, SCALE, FeatureOptions, LocalFeatures, extract
from lookalike.verification.matching import VerifyOptions
from lookalike.verification.store import FeatureStore
from lookalike.verification.votes import DescriptorVotes, vote_factory

RUNS = Path(__file__).parent / "results" / "scale_runs.jsonl"
CAMERAS = ("canon", "droid", "e63", "palm")
COVERS = 100
TOP = 50  # candidates the verified search verifies from the votes (its default)
CHUNK = 2048  # distractor items made and added at a time


def pool(work: Path, dvd: Path, flowers: Path, count: int) -> dict[str, list[LocalFeatures]]:
    """The real pictures' features, found once and kept in ``work``: ``sources`` (distractors are made of them),
    ``covers`` and ``photos`` (the queries, in CAMERAS order, 100 each)."""
    cache = work / f"pool{count}.npz"
    groups = {"sources": sorted(p for p in flowers.rglob("*.jpg")),
              "covers": [dvd / "reference" / f"{i:03d}.jpg" for i in range(1, COVERS + 1)],
              "photos": [dvd / c / f"{i:03d}.jpg" for c in CAMERAS for i in range(1, COVERS + 1)]}
    if not cache.is_file():
        options, arrays = FeatureOptions(count=count), {}
        for name, paths in groups.items():
            found = [extract(load_rgb(p), options) for p in paths]
            print(f"{name}: {len(found)} pictures, {sum(map(len, found))} features", flush=True)
            arrays[f"{name}_counts"] = np.array([len(f) for f in found])
            arrays[f"{name}_sizes"] = np.array([f.size for f in found])
            arrays[f"{name}_xy"] = np.concatenate([f.xy for f in found])
            arrays[f"{name}_descriptors"] = np.concatenate([f.descriptors for f in found])
        work.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **arrays)
    with np.load(cache) as z:
        arrays = {name: z[name] for name in z.files}  # each read once (an npz reads a member on every access)
    out = {}
    for name in groups:
        ends = np.cumsum(arrays[f"{name}_counts"])
        starts = ends - arrays[f"{name}_counts"]
        out[name] = [LocalFeatures(arrays[f"{name}_xy"][a:b], arrays[f"{name}_descriptors"][a:b], tuple(s))
                     for a, b, s in zip(starts, ends, arrays[f"{name}_sizes"])]
    return out


def distractor(sources: list[LocalFeatures], item: int, noise: float) -> LocalFeatures:
    """Distractor ``item``'s features, the same on every call: a source picture's, perturbed (see the module)."""
    return perturbed(sources, item, noise)[0]


def perturbed(sources: list[LocalFeatures], item: int, noise: float) -> tuple[LocalFeatures, int, np.random.Generator]:
    """Distractor ``item``'s features, the source picture they come from and the generator that made them (what
    else is drawn for the item comes next from it)."""
    rng = np.random.default_rng(item)
    source, swapped = rng.integers(len(sources), size=2)
    own, other = sources[source], sources[swapped]
    d = own.descriptors.astype(np.float32)
    swap = rng.random(len(d)) < 0.25
    if len(other):
        d[swap] = other.descriptors[rng.integers(len(other), size=int(swap.sum()))]
    d += noise * np.linalg.norm(d, axis=1, keepdims=True) / np.sqrt(d.shape[1]) * rng.standard_normal(d.shape)
    d = np.clip(d, 0, None)
    d = np.minimum(np.round(d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-6) * SCALE), 255)
    angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.2)
    turn = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
    w, h = own.size
    xy = (own.xy - [w / 2, h / 2]) @ turn.T + [w / 2, h / 2] + rng.uniform(-10, 10, 2)
    return LocalFeatures(np.clip(xy, 0, None).astype(np.float32), d.astype(np.uint8), own.size), int(source), rng


def votes_run(data: dict, items: int, factory: str, noise: float) -> dict:
    """Build the vote index of the covers and ``items - 100`` distractors with ``factory`` and search it."""
    total = sum(map(len, data["covers"])) + round((items - COVERS) * np.mean([len(f) for f in data["sources"]]))
    factory = vote_factory(total) if factory == "auto" else factory
    votes = DescriptorVotes.new(factory, DESCRIPTOR)  # stage 1 measured RootSIFT whole
    rng = np.random.default_rng(0)
    wanted = max(32 * votes.lists, 1 << 16)
    sample_items = rng.choice(np.arange(COVERS, items), size=min(items - COVERS, max(1, wanted // 300)),
                              replace=False)
    sample = np.concatenate([distractor(data["sources"], int(i), noise).unit_descriptors() for i in sample_items])
    start = time.perf_counter()
    votes.train(sample[:wanted])
    trained = time.perf_counter() - start
    start = time.perf_counter()
    votes.add(np.arange(COVERS), data["covers"])
    for first in range(COVERS, items, CHUNK):
        ids = np.arange(first, min(first + CHUNK, items))
        votes.add(ids, [distractor(data["sources"], int(i), noise) for i in ids])
        print(f"\r{factory}: {ids[-1] + 1} of {items} items added", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    added = time.perf_counter() - start
    ranks, times = [], []
    for n, photo in enumerate(data["photos"]):
        start = time.perf_counter()
        found = votes.candidates(photo, TOP)
        times.append(time.perf_counter() - start)
        ids = [i for i, _ in found]
        ranks.append(ids.index(n % COVERS) if n % COVERS in ids else TOP)
    ranks = np.array(ranks)
    return {"items": items, "factory": factory, "descriptors": votes.index.ntotal, "lists": votes.lists,
            "train_s": round(trained, 1), "add_s": round(added, 1), "bytes": len(votes.to_bytes()),
            "p50_ms": round(1000 * float(np.median(times)), 1), "p99_ms": round(1000 * float(np.percentile(times, 99)), 1),
            **{f"recall@{k}": round(float((ranks < k).mean()), 4) for k in (1, 5, TOP)},
            "peak_rss_gb": round(peak_memory() / 2 ** 30, 2)}


def source_embeddings(work: Path, flowers: Path, embedder: Path) -> np.ndarray:
    """The embeddings of flowers17's photos (the distractors' sources, in :func:`pool`'s order), found once."""
    cache = work / f"sources_{embedder.stem}.npy"
    if not cache.is_file():
        model = embedder_from_payload(read_embedder_file(embedder))
        paths = sorted(p for p in flowers.rglob("*.jpg"))
        vectors = [model.embed([load_rgb(p) for p in paths[i:i + 32]]).numpy() for i in range(0, len(paths), 32)]
        np.save(cache, np.concatenate(vectors).astype(np.float32))
    return np.load(cache)


def place(a: argparse.Namespace, name: str, backend: str) -> tuple[str, str | None]:
    """Where the catalogue ``name`` lives: a file in ``a.work``, or the collection ``name`` on ``--milvus-uri``."""
    if backend == "milvus" and a.milvus_uri:
        return a.milvus_uri, name
    return str(a.work / f"{name}.{'lkidx' if backend == 'faiss' else 'db'}"), None


def covers_name(a: argparse.Namespace) -> str:
    return f"covers_{a.embedder.stem}_{a.count}_d{a.dims}"


def build_covers(a: argparse.Namespace, backend: str, location: str, collection: str | None) -> Catalogue:
    """The 100 covers as `lookalike index build` makes their catalogue (local features coded in ``a.dims``,
    calibration)."""
    listing = a.work / "covers.csv"
    listing.write_text("path,label\n" + "".join(f"{a.dvd / 'reference' / f'{i:03d}.jpg'},{i:03d}\n"
                                               for i in range(1, COVERS + 1)))
    return build_catalogue(location, a.embedder, listing, backend, collection,
                           BuildOptions(local=FeatureOptions(count=a.count, dims=a.dims)))


def covers_catalogue(a: argparse.Namespace, backend: str) -> Catalogue:
    """The covers' catalogue, built once."""
    location, collection = place(a, covers_name(a), backend)
    try:
        return open_catalogue(location, backend, collection)
    except LookalikeError:  # not there yet, or its build interrupted: the same build makes or finishes it
        return build_covers(a, backend, location, collection)


def distractors(data: dict, items: int, a: argparse.Namespace, codes: DescriptorCodes, made: int = COVERS
                ) -> Iterator[tuple[list[dict], np.ndarray, list]]:
    """The distractor items ``made`` .. ``items - 1``, ``CHUNK`` at a time: (items, embeddings, local features as
    ``codes``, the covers' catalogue's, as `lookalike index add` codes them); each has a perturbed source picture's
    features and that picture's embedding jittered (see the module)."""
    sources = source_embeddings(a.work, a.flowers, a.embedder)
    start = time.perf_counter()
    for first in range(made, items, CHUNK):
        listed, vectors, local = [], [], []
        for item in range(first, min(first + CHUNK, items)):
            features, source, rng = perturbed(data["sources"], item, a.noise)
            v = sources[source] + a.embedding_noise / np.sqrt(sources.shape[1]) * rng.standard_normal(sources.shape[1])
            listed.append({"id": item, "path": f"distractor/{item:07d}.jpg", "label": f"d{item}", "fields": {}})
            vectors.append(v / np.linalg.norm(v))
            local.append(codes.encode(features))
        print(f"\rdistractors: {first + len(listed)} of {items} items made, {time.perf_counter() - start:.0f} s",
              end="", file=sys.stderr, flush=True)
        yield listed, np.array(vectors, np.float32), local
    print(file=sys.stderr)


def file_catalogue(data: dict, out: Path, items: int, a: argparse.Namespace) -> dict:
    """The catalogue file of the covers and the distractors: features go to disk as they are made and the vote
    index is :meth:`DescriptorVotes.build` over them, so the build never holds every item's features at once."""
    covers = covers_catalogue(a, "faiss")
    start = time.perf_counter()
    counts, sizes = list(covers.local.counts), [tuple(s) for s in covers.local.sizes]
    listed = [{"id": it["id"], "path": it["path"], "label": it["label"], "fields": {}} for it in covers.items]
    vectors = [covers.vectors()]
    xy_file, descriptor_file = a.work / "search_xy.bin", a.work / "search_descriptors.bin"
    with xy_file.open("wb") as xy, descriptor_file.open("wb") as descriptors:
        np.asarray(covers.local.xy).tofile(xy)
        np.asarray(covers.local.descriptors).tofile(descriptors)
        for chunk, chunk_vectors, local in distractors(data, items, a, local_codes(covers.meta["local"])):
            listed += chunk
            vectors.append(chunk_vectors)
            for features in local:
                counts.append(len(features))
                sizes.append(features.size)
                features.fixed_xy().tofile(xy)
                features.descriptors.tofile(descriptors)
    total = int(np.sum(counts))
    store = FeatureStore(np.array(counts, np.int32), np.array(sizes, np.uint16),
                         np.memmap(xy_file, np.uint16, "r", shape=(total, 2)),
                         np.memmap(descriptor_file, np.int8, "r", shape=(total, a.dims)))
    made = time.perf_counter() - start
    ids = np.arange(items, dtype=np.int64)
    start = time.perf_counter()
    votes = DescriptorVotes.build(ids, store, a.dims)
    voted = time.perf_counter() - start
    meta = {**covers.meta, "next_id": items}
    index = FaissIndex(meta["dim"], meta["factory"], search_params=meta.get("search_params", ""), ids=True)
    index.add(np.concatenate(vectors), ids)
    start = time.perf_counter()
    FileCatalogue(index, listed, meta, None, store, votes).save(out)
    saved = time.perf_counter() - start
    xy_file.unlink()
    descriptor_file.unlink()
    return {"make_s": round(made, 1), "votes_s": round(voted, 1), "save_s": round(saved, 1),
            "factory": vote_factory(total), "descriptors": total}


def milvus_catalogue(data: dict, location: str, collection: str | None, items: int, a: argparse.Namespace) -> dict:
    """The Milvus database of the covers and the distractors: a copy of the covers' Milvus Lite database (on a
    server: the covers built into the collection), the distractors added as `lookalike index add` adds items. A
    database left by an interrupted run is continued from its last whole chunk (adding an item again replaces it),
    its time so far kept in ``<name>.seconds`` in ``a.work``."""
    covers = covers_catalogue(a, "milvus")
    codes = local_codes(covers.meta["local"])
    covers.close()  # before its Milvus Lite database is copied
    spent = a.work / f"{collection or Path(location).name}.seconds"
    if not spent.is_file():
        if collection is None:
            shutil.rmtree(location, ignore_errors=True)
            shutil.copytree(place(a, covers_name(a), "milvus")[0], location, ignore=shutil.ignore_patterns("LOCK"))
        else:
            client = connect(location)
            for name in (n for n in client.list_collections() if n.startswith(collection)):
                client.drop_collection(name)
            disconnect(client, location)
            build_covers(a, "milvus", location, collection).close()
        spent.write_text("0")
    catalogue = open_catalogue(location, "milvus", collection)
    made = COVERS + (catalogue.count() - COVERS) // CHUNK * CHUNK
    start = time.perf_counter() - float(spent.read_text())
    for chunk, vectors, local in distractors(data, items, a, codes, made):
        catalogue.add_items(chunk, vectors, local)
        spent.write_text(f"{time.perf_counter() - start:.1f}")
    kind = catalogue.client.describe_index(catalogue.collection + "_local", "vector")["index_type"]
    total = catalogue.feature_rows()
    catalogue.close()
    return {"make_s": round(time.perf_counter() - start, 1), "votes_s": 0.0, "save_s": 0.0,
            "factory": f"Milvus {'server' if collection else 'Lite'}, {kind}", "descriptors": total, "packed": True}


def search_catalogue_path(data: dict, items: int, a: argparse.Namespace) -> tuple[str, str | None, dict]:
    """The catalogue of ``items`` for ``a.backend``, built once and kept in ``a.work`` (or on the server) with its
    build record."""
    location, collection = place(a, f"search{items}_{a.count}_d{a.dims}", a.backend)
    record = a.work / f"{collection or Path(location).name}.json"
    if record.is_file():
        return location, collection, json.loads(record.read_text())
    if a.backend == "faiss":
        built = file_catalogue(data, Path(location), items, a)
    else:
        built = milvus_catalogue(data, location, collection, items, a)
    stored = Path(location) if collection is None else a.milvus_data
    if stored is not None:
        built["file_bytes"] = sum(f.stat().st_size for f in ([stored] if stored.is_file() else stored.rglob("*"))
                                  if f.is_file())
    built["build_peak_rss_gb"] = round(peak_memory() / 2 ** 30, 2)
    record.write_text(json.dumps(built))
    return location, collection, built


def measure(catalogue_path: str, backend: str, collection: str | None, embedder: Path, dvd: Path, photos: int,
            ratio: float | None = None) -> dict:
    """The verified search of the DVD photos (the first ``photos`` of each camera) in the catalogue, as `lookalike
    search` runs it (default
    settings: 50 candidates of the embedding and 50 of the votes verified): recall@1/@5 of the photo's cover,
    milliseconds per photo (embedding, local features and search; the photo decoded before), the loading time and
    the peak memory of this process (run on its own: what a search process holds); ``ratio``: Lowe's, if not the
    default."""
    start = time.perf_counter()
    catalogue = open_catalogue(catalogue_path, backend, collection)
    model = embedder_from_payload(read_embedder_file(embedder))
    loaded = time.perf_counter() - start
    meta, times, ranks = catalogue.meta["local"], [], []
    for camera in CAMERAS:
        for i in range(1, photos + 1):
            photo = load_rgb(dvd / camera / f"{i:03d}.jpg")
            start = time.perf_counter()
            verifying = VerifyOptions() if ratio is None else VerifyOptions(ratio=ratio)
            hits = search_catalogue(catalogue, model.embed([photo]).numpy(), SearchOptions(k=5, verification=verifying),
                                    photo_features([photo], meta))[0].hits
            times.append(time.perf_counter() - start)
            labels = [h.label for h in hits]
            ranks.append(labels.index(f"{i:03d}") if f"{i:03d}" in labels else 5)
            print(f"\r{len(times)} of {photos * len(CAMERAS)} photos, p50 {1000 * np.median(times):.0f} ms", end="",
                  file=sys.stderr, flush=True)
    ranks = np.array(ranks)
    validation = np.tile(np.arange(1, photos + 1) <= COVERS // 2, len(CAMERAS))  # covers 1-50: where settings
    return {"photos": len(ranks), "load_s": round(loaded, 1), "recall@1": round(float((ranks < 1).mean()), 4),
            "recall@5": round(float((ranks < 5).mean()), 4),  # are chosen; 51-100: reported untouched
            "recall@1_validation": round(float((ranks[validation] < 1).mean()), 4),
            "recall@1_test": round(float((ranks[~validation] < 1).mean()), 4) if (~validation).any() else None,
            "p50_ms": round(1000 * float(np.median(times)), 1), "p99_ms": round(1000 * float(np.percentile(times, 99)), 1),
            "search_peak_rss_gb": round(peak_memory() / 2 ** 30, 2)}


def peak_memory() -> int:
    """The most memory this process has held, in bytes (Linux's VmHWM: its own, where ``ru_maxrss`` counts the
    parent's memory at the fork too)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def server_memory() -> int | None:
    """The memory a Milvus server on this machine holds now (VmRSS of the process named ``milvus``), in bytes."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            lines = status.read_text().splitlines()
        except OSError:
            continue
        if lines[0].split()[-1] == "milvus":
            return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), None)
    return None


def search_run(data: dict, items: int, a: argparse.Namespace) -> dict:
    """Build (or find) the catalogue of ``items`` and measure its verified search in a process of its own."""
    location, collection, built = search_catalogue_path(data, items, a)
    done = subprocess.run([sys.executable, __file__, "measure", "--catalogue", location, "--backend", a.backend,
                           *(["--collection", collection] if collection else []), "--embedder", str(a.embedder),
                           "--dvd", str(a.dvd), "--photos", str(a.photos)], stdout=subprocess.PIPE, text=True)
    if done.returncode:
        raise SystemExit("the search process failed (its messages above)")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if collection and (held := server_memory()) is not None:
        found["server_rss_gb"] = round(held / 2 ** 30, 2)
    return {"items": items, **built, **found}


def report(runs: list[dict]) -> str:
    rows = ["| items | features a picture | index | lists | train s | add s | MB | p50 ms | p99 ms | recall@1 | "
            "recall@5 | recall@50 |", "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in runs if r["stage"] == "votes"):
        rows.append(f"| {r['items']:,} | {r['count']} | {r['factory']} | {r['lists']} | {r['train_s']} | "
                    f"{r['add_s']} | {r['bytes'] / 2 ** 20:.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['recall@1']} | "
                    f"{r['recall@5']} | {r[f'recall@{TOP}']} |")
    rows += ["", "| backend | items | features a picture | descriptor bytes | vote index | build: make / votes / save "
             "s | disk GB | load s | photos | recall@1 | recall@5 | p50 ms | p99 ms | search peak GB |",
             "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in runs if r["stage"] == "search"):
        code = f"{r['dims']} (codes)" if r.get("dims") else "128 (RootSIFT)"
        backend = r["requested"] + (" (features packed in item rows)" if r.get("packed") else "")
        disk = f"{r['file_bytes'] / 1e9:.2f}" if "file_bytes" in r else ""
        peak = str(r["search_peak_rss_gb"]) + (f" (server {r['server_rss_gb']})" if "server_rss_gb" in r else "")
        rows.append(f"| {backend} | {r['items']:,} | {r['count']} | {code} | {r['factory']} | {r['make_s']} / "
                    f"{r['votes_s']} / {r['save_s']} | {disk} | {r['load_s']} | {r['photos']} | {r['recall@1']} | "
                    f"{r['recall@5']} | {r['p50_ms']} | {r['p99_ms']} | {peak} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", choices=["votes", "search", "measure"],
                   help="measure: one catalogue file's verified search (what `search` runs in a process of its own)")
    p.add_argument("--dvd", type=Path)
    p.add_argument("--flowers", type=Path)
    p.add_argument("--embedder", type=Path, help="search: the embedder file (e.g. `lookalike pretrained`'s Lite0)")
    p.add_argument("--catalogue", help="measure: the catalogue file (or Milvus server URI)")
    p.add_argument("--collection", help="measure: the collection on the Milvus server")
    p.add_argument("--milvus-uri", help="search --backend milvus: collections on this Milvus server (e.g. "
                   "http://127.0.0.1:19530) instead of Milvus Lite files")
    p.add_argument("--milvus-data", type=Path, help="search: the server's data folder (its bytes are reported)")
    p.add_argument("--work", type=Path, default=Path("/tmp/scale"))
    p.add_argument("--items", type=int, nargs="+", default=[10_000])
    p.add_argument("--factories", nargs="+", default=["auto"])
    p.add_argument("--count", type=int, default=400, help="local features a picture")
    p.add_argument("--dims", type=int, default=32, help="search: bytes of a descriptor's code (--local-dims)")
    p.add_argument("--noise", type=float, default=0.3, help="descriptor jitter, a share of their norm")
    p.add_argument("--embedding-noise", type=float, default=0.5,
                   help="search: a distractor's embedding is its source picture's plus this much noise (of its norm)")
    p.add_argument("--backend", choices=["faiss", "milvus"], default="faiss",
                   help="search: the catalogue file, or a Milvus Lite database")
    p.add_argument("--photos", type=int, default=COVERS, help="search: the first this many photos of each camera")
    p.add_argument("--ratio", type=float, help="measure: Lowe's ratio (default: the library's)")
    p.add_argument("--report", action="store_true")
    a = p.parse_args()
    for name in ("dvd", "flowers", "embedder", "work", "milvus_data"):
        if getattr(a, name) is not None:
            setattr(a, name, getattr(a, name).resolve())
    if a.report or a.stage is None:
        print(report([json.loads(line) for line in RUNS.open()]))
        return
    if a.stage == "measure":
        print(json.dumps(measure(a.catalogue, a.backend, a.collection, a.embedder, a.dvd, a.photos, a.ratio)))
        return
    runs = [json.loads(line) for line in RUNS.open()] if RUNS.is_file() else []
    done = {(r["stage"], r["items"], r["count"], r.get("requested"), r.get("dims"), r.get("packed", False))
            for r in runs}
    data = pool(a.work, a.dvd, a.flowers, a.count)
    for items in a.items:
        for factory in a.factories if a.stage == "votes" else [a.backend + (" server" if a.milvus_uri else "")]:
            dims = a.dims if a.stage == "search" else None
            if (a.stage, items, a.count, factory, dims, factory.startswith("milvus")) in done:
                print(f"{a.stage}: {items} items, {factory or ''} done already")
                continue
            found = votes_run(data, items, factory, a.noise) if a.stage == "votes" else search_run(data, items, a)
            record(RUNS, {"stage": a.stage, "requested": factory, "count": a.count, "noise": a.noise,
                          **({"embedding_noise": a.embedding_noise, "dims": a.dims,
                              "ratio": VerifyOptions().ratio} if a.stage == "search" else {}),
                          **found})


if __name__ == "__main__":
    main()
