"""The catalogue: items (id, path, label, manifest columns) with their embeddings, searched, filtered and edited
through one interface (:class:`~lookalike.catalogue.base.Catalogue`) by two backends: a ``.lkidx`` file with a FAISS
index (:mod:`~lookalike.catalogue.file`) and a Milvus collection (:mod:`~lookalike.catalogue.milvus`)."""
