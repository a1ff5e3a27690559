"""The search page and its JSON API (FastAPI), over a catalogue index."""
