"""Small shared helpers: atomic file writes, hashing, manifests, seeding, progress."""
