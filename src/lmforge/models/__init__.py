"""lmforge.models."""
