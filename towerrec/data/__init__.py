"""Data: sources (CSV, Parquet, MovieLens, synthetic), splits, and the features the towers read."""
