"""The box model's product side: its file (box.pt) and cropping photos to the product it finds (``--crop auto``)."""
