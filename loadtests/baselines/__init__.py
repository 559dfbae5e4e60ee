"""Servers seqserve is measured against, serving the same stored model (``BENCH_MODEL``) the same way a user
would write them from the docs. Only the benchmark starts them."""
