"""Data: sources, cleaning, deduplication, shards, and the datasets the trainer reads."""
