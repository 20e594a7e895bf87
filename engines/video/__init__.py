"""Films: the streaming pipeline (segments, resume, final mux) and temporal smoothing."""
