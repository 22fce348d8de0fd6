"""Training: phase 1, the scores of phase 2a, and the training recipe of teacher and phase 3.

``phase1`` (every candidate op learns its teacher layer by layer-wise distillation),
``score`` (phase 2a: replace-one scores), ``train`` (classifier training and evaluation,
shared by teacher training and phase-3 fine-tuning), ``sync_bn`` (BatchNorm over the
global batch of a torchrun job). Nothing is imported here.
"""
