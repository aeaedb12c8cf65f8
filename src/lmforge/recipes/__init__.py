"""Recipes: complete, reproducible experiments that run every stage (data, tokenizer, training, evaluation).

One module per recipe; `arithmetic` teaches a small GPT to add, subtract and multiply.
"""
