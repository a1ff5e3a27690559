"""The product side: the embedder file, batched embedding, the catalogue index, calibration, exports."""
