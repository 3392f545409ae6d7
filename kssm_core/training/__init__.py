"""Training: the loop, checkpoints (save, restore, RNG), data and corpus, precision, DDP, archiving a previous run. Imports torch."""
