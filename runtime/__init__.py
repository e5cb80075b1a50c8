"""The runtime: a paged-KV engine with a radix-tree prefix cache."""
