"""Analysis: statistics and the paper's figures, per task, from the Parquet results."""
