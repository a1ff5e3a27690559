"""``lookalike harvest``: verified search labels a shop's own photos; the unambiguous ones become training marks.

    lookalike harvest --index catalog.lkidx --photos DIR|LIST.txt|TABLE.csv [--into catalog.feedback]
    python train.py experiment=shop_photos data.root=catalog.csv data.feedback=catalog.feedback/feedback.csv

A photo is kept as a mark of the product it verified when nothing else is close: the first result verified, no
other product's picture verified or set apart as its look-alike, every other product's best candidate at least
--margin inliers behind (default: the catalogue's calibrated threshold). Kept photos are re-encoded into the
folder's photos/ with the outline's box; a journal (harvest.jsonl) names every photo judged, so a run that is
stopped continues where it was and no photo is kept twice. A table's label column only measures the precision.
"""

from __future__ import annotations

import argparse

from lookalike.cli.options import NON_NEGATIVE, POSITIVE, add_backend_options


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="lookalike harvest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, help="catalogue index built with local features (.lkidx, or Milvus)")
    p.add_argument("--photos", required=True, help="a folder of photos (its folder names are not read as labels), "
                   "a text file of paths, or a CSV/parquet table with path[,label]")
    p.add_argument("--into", help="feedback folder to keep the marks in (default: catalog.feedback beside the "
                   "index, where the page keeps its marks)")
    p.add_argument("--margin", type=NON_NEGATIVE, help="inliers the product must lead every other product's best "
                   "candidate by (default: the catalogue's calibrated threshold)")
    p.add_argument("--verify", type=POSITIVE, default=50, help="candidates verified per photo (default 50)")
    p.add_argument("--by", default="label", help="what makes another product: label (default) or a manifest column")
    p.add_argument("--embedder", help="embedder file (default: the one the index was built with)")
    add_backend_options(p)
    a = p.parse_args(argv)
    from lookalike.catalogue.backends import open_catalogue
    from lookalike.catalogue.harvest import HarvestOptions, Harvester, harvest, photo_list
    from lookalike.data.feedback import FeedbackLog, feedback_folder
    from lookalike.embedder.file import embedder_from_payload

    photos = photo_list(a.photos)
    index = open_catalogue(a.index, a.backend, a.collection)
    index.check_columns(a.by)
    embedder = embedder_from_payload(index.check_embedder(a.embedder or index.meta["embedder"])).eval()
    folder = a.into or feedback_folder(a.index)
    harvester = Harvester(index, embedder, FeedbackLog(folder), HarvestOptions(a.verify, a.margin, a.by))
    result = harvest(harvester, photos)
    print(f"{result.summary()}\nmarks: {harvester.marks.file} (margin {harvester.margin} inliers)\n"
          f"train with them: python train.py experiment=shop_photos data.root=CATALOGUE.csv "
          f"data.feedback={harvester.marks.file}")
