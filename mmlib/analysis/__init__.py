"""Analysis: what the notebooks measure on trained models (ablations, attribution, imbalance, alignment, ...)."""
