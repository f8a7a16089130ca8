"""Evaluation: full-catalogue top-k, Recall/NDCG with standard errors, plots."""
