"""lmforge.interpret."""
