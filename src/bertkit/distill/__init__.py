"""Knowledge distillation: a fine-tuned teacher's task taught to a smaller student (`bertkit distill`).

    run.py        the options, the student, the TrainTask around the teacher's task, `distill()`
    command.py    the `bertkit distill` flags and command
    teacher.py    the teacher loaded for inference at its device's precision; its logits cached on disk
    losses.py     soft targets (KL with temperature), hidden-state and attention-map MSE, the layer mapping
    taps.py       hooks that record an encoder's intermediate layers during a forward
    augment.py    token-level augmentation of training texts
"""

from bertkit.distill.run import DistillOptions, distill

__all__ = ["DistillOptions", "distill"]
