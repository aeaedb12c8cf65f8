"""lmforge.scratch."""
