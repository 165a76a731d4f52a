"""A member stopped as soon as its loss diverges (`lrsweep.ml.divergence`); training stopped when all have."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import keras
import numpy as np
from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

from lrsweep.ml.divergence import DivergedError, divergence_message, member_losses
from lrsweep.ml.training import Member
from lrsweep.run.callbacks.steps import freeze_members, optimizer_steps, steps_done

log = logging.getLogger(__name__)

TAG_DIVERGED_LOSS = "lrsweep.diverged.loss"  # the running loss that tripped the rule (repr of a float)
TAG_STARTING_LOSS = "lrsweep.diverged.starting_loss"  # the member's loss before training, on the reference examples


class StopOnDivergence(keras.callbacks.Callback):
    """Stops a member as soon as its loss diverges, and remembers where; stops training when all members have.

    A member diverges when the loss Keras reports for it (the epoch's running mean) is NaN or infinite, or above
    `factor` times its starting loss: its loss before any update, measured at train begin on the same fixed
    examples for every member (`reference_examples`, `member_losses`), or kept from where training started (a
    member going on in another pack: `Member.starting_loss`). With float32 an exploding run may stay
    finite on one backend (TensorFlow: SGD at LR 1e9 ends with loss 7.5e32) and turn NaN on another (JAX); the
    factor catches both at the same batch, with the same message (`divergence_message`), the loss being recorded
    as tags `lrsweep.diverged.loss` and `lrsweep.diverged.starting_loss` and in the log. `factor` None: only a
    non-finite loss counts. scripts/measure_divergence.py measures healthy and exploding runs to choose it.

    Checked after every call Keras makes (every `steps_per_execution` steps): a diverged run stops within one
    chunk of steps rather than training on for the rest of its epochs. The caller turns `member.error` into a
    FAILED run. In a pack the member is also frozen: the pack's optimizer freezes a member in the step its loss
    becomes non-finite (`lrsweep.run.packing`); one flagged by the factor is frozen here, its entry of the
    optimizer's `alive` mask set to 0 before the next step. Members share no weights, so the others train on
    undisturbed.

    Args:
        members: the runs watched (a pack's members, or one).
        factor: the limit on the loss, as a multiple of the starting loss; None: only NaN/inf counts.
        reference: the examples (x, y) the starting loss is measured on (`reference_examples`); needed with a factor.
        client: where the tags go; None records none.
    """

    def __init__(
        self,
        members: Sequence[Member],
        factor: float | None = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        client: MlflowClient | None = None,
    ) -> None:
        super().__init__()
        self.members = list(members)
        self.factor = None if factor is None else float(factor)
        self.reference = reference
        self.client = client
        self.starting_losses: list[float | None] = [None] * len(self.members)
        self._epoch = 0
        self._epoch_start = 0

    def on_train_begin(self, logs=None) -> None:
        if self.factor is None or self.reference is None:
            return
        if any(member.starting_loss is None for member in self.members):  # else measured where training started
            measured = member_losses(self.model, *self.reference, self.members)
            for member, start in zip(self.members, measured, strict=True):
                if member.starting_loss is None:
                    member.starting_loss = start
                    log.debug("%s: starting loss %.6g, divergence above %.6g", member.name, start, self.factor * start)
        self.starting_losses = [member.starting_loss for member in self.members]

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self._epoch = epoch
        self._epoch_start = optimizer_steps(self.model.optimizer)

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        logs = logs or {}
        flagged = []
        for member, start in zip(self.members, self.starting_losses, strict=True):
            loss = logs.get(member.key("loss"))
            if member.error is not None or loss is None:
                continue
            loss = float(loss)
            # A starting loss that is not finite sets no limit: such a run is caught by its first non-finite loss.
            limit = self.factor * start if self.factor is not None and start is not None else math.inf
            if not math.isfinite(loss) or loss > limit:
                steps = steps_done(self.params, batch)
                message = divergence_message(member.own_epoch(self._epoch), steps, self.factor)
                member.error = DivergedError(message)
                member.stopped_epoch = self._epoch
                member.stopped_step = self._epoch_start + steps
                flagged.append((member, loss, start))
        if flagged:
            self._flagged(flagged)
        if all(member.error is not None for member in self.members):
            self.model.stop_training = True

    def _flagged(self, flagged: list[tuple[Member, float, float | None]]) -> None:
        """Records why members stopped, and freezes those of a pack whose loss is still finite."""
        for member, loss, start in flagged:
            log.warning(
                "%s: loss %r in epoch %d, step %d, starting loss %r (training.divergence_factor=%s): diverged",
                member.name, loss, member.own_epoch(member.stopped_epoch), member.stopped_step + member.step_offset,
                start, self.factor,
            )  # fmt: skip
            if self.client is not None:
                tags = [RunTag(TAG_DIVERGED_LOSS, repr(loss))]
                if start is not None:
                    tags.append(RunTag(TAG_STARTING_LOSS, repr(start)))
                self.client.log_batch(member.run_id, tags=tags)
        # The pack's optimizer freezes a member only once its gradients are not finite: one stopped by the factor
        # is frozen here.
        freeze_members(self.model, [member.index for member, _, _ in flagged if member.index is not None])
