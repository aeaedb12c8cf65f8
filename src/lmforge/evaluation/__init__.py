"""lmforge.evaluation."""
