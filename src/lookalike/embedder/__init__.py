"""The embedder as a product: its self-contained file, embedding images and loaders with it, exporting it
(TorchScript / ONNX), calibrating its match threshold, and clustering a catalogue with it."""
