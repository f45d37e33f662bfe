"""Analysis of trained generators: figures in :mod:`.plots` (imported on demand, since it
loads matplotlib)."""
