"""lmforge.scratch: numpy-only reference implementations of the mechanisms lmforge builds on.

dense (layers, activations, losses, backprop by hand, SGD, trace mode) · xor · attention (SDPA with a
causal mask, multi-head, layer norm, one transformer block) · optim (SGD, momentum, RMSProp, Adam,
AdamW, warmup + cosine) · regularization (L2, L1 proximal step, elastic net, inverted dropout) ·
gradcheck (finite differences) · bpe (the naive BPE training loop).

Each is written to be read and checked against PyTorch (or the fast lmforge code) in
tests/test_scratch_*.py; none of it is used by training or inference. Deliberately no torch imports.
"""
