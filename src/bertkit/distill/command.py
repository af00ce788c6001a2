"""`bertkit distill`: its flags, and the command that runs `distill()` on them."""

from __future__ import annotations

import argparse

from bertkit.argtypes import POSITIVE, add_dataclass_flags, options_from_args
from bertkit.config import PRESETS
from bertkit.distill.run import DistillOptions, distill
from bertkit.train import TrainConfig
from bertkit.train_flags import add_train_arguments, config_from_args, print_result


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The teacher, the data, the student (a preset size or a pre-trained start), the distillation's options and
    every training flag of `finetune`."""
    p.add_argument("--teacher", required=True, help="a fine-tuned checkpoint directory (with task.json, or a "
                   "transformers BertFor* head): the student learns its task, labels and vocabulary")
    p.add_argument("--train", required=True, help="training file, in the teacher's task's format (its labels feed "
                   "the hard loss, its texts the soft targets)")
    p.add_argument("--eval", default=None, help="evaluation file (scored at --eval-every and at the end)")
    p.add_argument("--format", default=None, help="input format of --train and --eval (default: the task's)")
    p.add_argument("--unlabeled", default=None, help="more texts for the soft targets only, one a line (a tab "
                   "separates a text pair), for the tasks whose input is a text")
    student = p.add_mutually_exclusive_group(required=True)
    student.add_argument("--student-size", default=None, choices=sorted(n for n in PRESETS if n != "base"),
                         help="a preset student, from random weights")
    student.add_argument("--student-init", default=None, help="a pre-trained checkpoint to start the student from "
                         "(its vocabulary must be the teacher's)")
    student.add_argument("--student-layers", type=POSITIVE, default=None, metavar="N",
                         help="a student cut from the teacher: its embeddings and N of its layers (every L/N-th from "
                         "the first, as DistilBERT starts), a fresh task head")
    p.add_argument("--limit", type=POSITIVE, default=None, help="use only the first N training examples (N >= 1)")
    add_dataclass_flags(p, DistillOptions)
    add_train_arguments(p, TrainConfig(output_dir="runs/distill", lr=5e-4, epochs=3.0, warmup=0.1))


def run(args: argparse.Namespace) -> int:
    result = distill(args.teacher, args.train, config_from_args(args), eval_file=args.eval, fmt=args.format,
                     unlabeled=args.unlabeled, student_size=args.student_size, student_init=args.student_init,
                     limit=args.limit, options=options_from_args(DistillOptions, args),
                     student_layers=args.student_layers)
    print_result(result, "evaluation")
    return 0
