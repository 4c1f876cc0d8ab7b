"""RQ job functions for GPU items, the processors they run, and the flusher."""
