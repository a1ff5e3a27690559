"""The box model, as its own task: composites of pictures with known boxes (the training data), the network,
training it (``python train.py experiment=box``), its file (box.pt) and cropping photos to the product it finds
(``--crop auto``)."""
