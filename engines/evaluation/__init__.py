"""Scoring results for ``colorize eval``: pairing, the realism probe, FID's Inception."""
