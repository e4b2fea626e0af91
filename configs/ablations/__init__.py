"""Ablation configs: each reproduces a table of the PGVT paper row by row (`:row=...`)."""
