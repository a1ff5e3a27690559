"""Verified matching: local features of catalogue pictures and photos, candidates by descriptor votes, and
geometric verification of the embedding search's candidates (one transformation that many matches agree on)."""
