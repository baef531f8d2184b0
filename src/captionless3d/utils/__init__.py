"""Small shared utilities: atomic writes, manifests, hashing."""
