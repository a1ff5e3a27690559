"""kNN search (lookalike.retrieval.knn): the FAISS and torch backends agree, bfloat16 candidates re-scored in float32
are exact, filtered FAISS searches keep the index's search parameters, and options and blobs that do not fit are
refused with one message."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.errors import LookalikeError
from lookalike.retrieval.knn import FaissIndex, faiss_num_gpus, knn, resolve_backend


@pytest.mark.parametrize("with_exclude", [False, True])
def test_faiss_and_torch_backends_return_the_same_neighbours(with_exclude: bool) -> None:
    x = torch.nn.functional.normalize(torch.randn(300, 32, generator=torch.Generator().manual_seed(0)), dim=1)
    exclude = torch.arange(300) if with_exclude else None
    s_t, i_t = knn(x, x, 10, exclude=exclude, backend="torch")
    s_f, i_f = knn(x, x, 10, exclude=exclude, backend="faiss")
    assert torch.equal(i_t, i_f)
    torch.testing.assert_close(s_t, s_f, atol=1e-5, rtol=0)
    assert resolve_backend("auto", torch.device("cpu")) == "faiss"
    assert resolve_backend("auto", torch.device("cuda")) == ("faiss" if faiss_num_gpus() else "torch")


@pytest.mark.parametrize("with_exclude", [False, True])
def test_bf16_candidates_rescored_in_float32_equal_the_float32_search(with_exclude: bool) -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 64, generator=g)
    x = torch.nn.functional.normalize(centres.repeat_interleave(50, 0) + 0.05 * torch.randn(400, 64, generator=g), dim=1)
    exclude = torch.arange(400) if with_exclude else None
    s32, i32 = knn(x, x, 20, exclude=exclude, backend="torch", precision="fp32")
    s16, i16 = knn(x, x, 20, exclude=exclude, backend="torch", precision="bf16", chunk_size=64)
    # the same ranked similarities, each the true one of the item returned: the exact top-k up to float32
    # rounding (~1e-7, where mm and bmm sum in different orders and near-equal items may swap)
    torch.testing.assert_close(s16, s32, atol=1e-6, rtol=0)
    torch.testing.assert_close((x[i16] * x[:, None]).sum(-1), s16, atol=1e-6, rtol=0)
    assert (i16 == i32).float().mean() > 0.99
    # bfloat16 similarities alone would not order these neighbours (they differ by less than its rounding)
    raw = (x.bfloat16() @ x.bfloat16().T).float()
    if with_exclude:
        raw.fill_diagonal_(float("-inf"))
    assert (raw.topk(20, dim=1).indices != i32).float().mean() > 0.1
    # a gallery smaller than k plus the margin: every item is a candidate
    s_small, i_small = knn(x[:30], x[:30], 29, exclude=exclude[:30] if with_exclude else None, precision="bf16")
    assert torch.equal(i_small, knn(x[:30], x[:30], 29, exclude=exclude[:30] if with_exclude else None,
                                    precision="fp32")[1])
    with pytest.raises(LookalikeError, match="knn.precision"):
        knn(x, x, 5, backend="torch", precision="fp16")


def test_options_of_the_other_backend_are_refused() -> None:
    x = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    with pytest.raises(LookalikeError, match="knn.precision=bf16 applies to the torch backend"):
        knn(x, x, 3, backend="faiss", precision="bf16")
    with pytest.raises(LookalikeError, match="knn.search_params='efSearch=64' are FAISS parameters"):
        knn(x, x, 3, backend="torch", search_params="efSearch=64")
    assert knn(x, x, 3, backend="faiss", factory="HNSW32", search_params="efSearch=64")[1].shape == (20, 3)


def test_knn_refuses_damaged_blobs_of_another_dimension() -> None:
    index = FaissIndex(16, "Flat", ids=True)
    index.add(np.eye(16, dtype=np.float32), np.arange(16))
    with pytest.raises(LookalikeError, match="16 dimensions, not 8"):
        FaissIndex.from_bytes(index.to_bytes(), 8, "Flat")


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "HNSW32", "BFlat"])
def test_an_index_read_in_place_from_a_memory_map_answers_alike_and_is_copied_before_it_changes(
        factory: str, tmp_path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = FaissIndex(32, factory, ids=True)
    index.add(vectors, np.arange(len(vectors)))
    pieces: list[bytes] = []
    index.write(pieces.append)
    (tmp_path / "i.faiss").write_bytes(b"".join(pieces))
    assert b"".join(pieces) == index.to_bytes()
    mapped = FaissIndex.from_bytes(np.memmap(tmp_path / "i.faiss", np.uint8, "r"), 32, factory, mapped=True)
    assert np.array_equal(mapped.search(vectors[:20], 5)[1], index.search(vectors[:20], 5)[1])
    for changed in (mapped, index):  # FAISS cannot grow arrays it reads in place: a copy grows
        changed.add(vectors[:3], np.arange(3) + 5000)
        changed.remove(np.arange(10))
    assert mapped.ntotal == len(vectors) - 7
    assert np.array_equal(mapped.search(vectors[:20], 5)[1], index.search(vectors[:20], 5)[1])
    assert (tmp_path / "i.faiss").read_bytes() == b"".join(pieces)  # the file is as it was


@pytest.mark.parametrize("factory, params", [("IVF64,Flat", "nprobe=16"), ("HNSW32", "efSearch=128")])
def test_a_filtered_search_keeps_the_index_search_parameters(factory: str, params: str) -> None:
    """A filter that keeps every item answers as no filter: the id selector's search parameters carry the
    index's own nprobe / efSearch (FAISS's defaults, nprobe 1, found 0.07 of the same top-10)."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(20000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    index = FaissIndex(32, factory, search_params=params, ids=True)
    index.add(vectors, np.arange(len(vectors)))
    assert np.array_equal(index.search(queries, 10)[1], index.search(queries, 10, allowed=np.arange(len(vectors)))[1])
