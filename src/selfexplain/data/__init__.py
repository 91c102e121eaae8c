"""Layer 4: the rows of a run (draws, splits, controls), the variant registry, the experiment
matrix and the model-free baselines."""
