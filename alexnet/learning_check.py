"""Is the net learning? A pure check that notices an error sitting at chance and says why.

With the paper's initialisation (biases of 1 in conv2, conv4, conv5, fc6, fc7) a small data
set often never leaves chance: the loss stays at ln(classes) or grows while the schedule
divides the lr down, and nothing says so. `chance_advice` looks at the latest error
(validation if there is one, else training) after `after_steps` optimizer steps; when it is
within `tolerance` (a fraction of chance) of the error of guessing, it returns one paragraph
of advice, naming the settings to change; otherwise None. Training prints it once.
"""

from __future__ import annotations

from dataclasses import dataclass

from alexnet import paper

CHANCE_STEPS = 100  # optimizer steps before the check speaks (run.chance_steps)
CHANCE_TOLERANCE = 0.05  # "at chance": error >= (1 - 0.05) x chance error


def chance_error(num_classes: int) -> float:
    """Top-1 error of guessing (or of always naming one class of a balanced set): 1 - 1/C."""
    return 1.0 - 1.0 / max(1, num_classes)


def at_chance(error: float, num_classes: int, tolerance: float = CHANCE_TOLERANCE) -> bool:
    """True when `error` is no better than chance, within `tolerance` x chance."""
    if num_classes < 2:
        return False
    return error >= (1.0 - tolerance) * chance_error(num_classes)


@dataclass(frozen=True)
class Evidence:
    """What the check looks at: the step reached and the latest errors (fractions) and loss."""

    step: int
    num_classes: int
    val_error: float | None = None
    train_error: float | None = None
    train_loss: float | None = None


def chance_advice(evidence: Evidence, *, init_bias: float, lr: float,
                  after_steps: int = CHANCE_STEPS,
                  tolerance: float = CHANCE_TOLERANCE) -> str | None:
    """Advice when the error sits at chance after `after_steps` steps, else None.

    The validation error is the witness when there is one (the training error of an epoch
    averages over its first steps, which lag); the advice names model.init_bias while it is
    the paper's 1 (the usual cause on small data), else a tenth of `lr`, the run's starting
    rate (optim.lr), not the schedule's rate of the moment, which may already be divided.
    """
    if after_steps <= 0 or evidence.step < after_steps:
        return None
    which, error = ("validation", evidence.val_error) if evidence.val_error is not None \
        else ("training", evidence.train_error)
    if error is None or not at_chance(error, evidence.num_classes, tolerance):
        return None
    head = (f"the net is not learning: after {evidence.step} steps the {which} error is "
            f"{100 * error:.2f}%, chance for {evidence.num_classes} classes is "
            f"{100 * chance_error(evidence.num_classes):.2f}%")
    if init_bias >= paper.INIT_BIAS_ONE:
        fix = ("the paper's biases of 1 (model.init_bias=1) often keep a small data set at "
               "chance: start again with --preset own or --set model.init_bias=0.1")
    else:
        fix = (f"try a smaller learning rate (--set optim.lr={lr / 10:g}), more epochs, or "
               "check that the class folders hold what their names say")
    return f"{head}; {fix} (run.chance_steps=0 turns this check off)"
