"""Layer 7: tables, paired and clustered comparisons, figures."""
