"""Learning-rate schedules as pure functions of the optimizer step, and their thin Keras adapter.

Every schedule is built the same way, so a config group can swap them: a factory validates its arguments
once and returns a `Schedule`, a function `lr(step)` of the global optimizer step (0-based) written with
`keras.ops`, so it runs inside a compiled train step on any Keras backend and on NumPy input alike.
Run-time quantities (`steps_per_epoch`, `total_steps`) are passed by the caller, never stored in config.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
from keras import ops

from lrsweep.core.checks import MAX_STEPS, check_choice, check_count, check_lr, check_number

StepFn = Callable[[Any], Any]
PUBLIC_MODULE = "lrsweep.schedules"  # the name configs use in `_target_`, and `get_config()` records


class Schedule:
    """A pure function `lr(step)` together with the `_target_` config that rebuilds it."""

    def __init__(self, fn: StepFn, config: dict[str, Any]):
        self.fn = fn
        self.config = config

    def __call__(self, step):
        return self.fn(step)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items() if k != "_target_")
        return f"{self.config['_target_'].rsplit('.', 1)[-1]}({args})"


def schedule_factory(factory: Callable[..., StepFn]) -> Callable[..., Schedule]:
    """Wraps a factory so that what it returns remembers its arguments (for `get_config`)."""
    signature = inspect.signature(factory)
    target = f"{PUBLIC_MODULE}.{factory.__qualname__}"

    @functools.wraps(factory)
    def build(*args, **kwargs) -> Schedule:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = {name: _as_config(value) for name, value in bound.arguments.items()}
        return Schedule(factory(*args, **kwargs), {"_target_": target, **config})

    build.schedule_target = target
    return build


def _as_config(value: Any) -> Any:
    """An argument as plain config: nested mappings as dicts, a factory awaiting run-time args as its partial node.

    Hydra hands a nested `_partial_: true` node over as a `functools.partial` of a factory; recording it as the
    same node keeps `get_config()` complete and lets `instantiate` rebuild it.
    """
    if isinstance(value, functools.partial) and hasattr(value.func, "schedule_target") and not value.args:
        keywords = {name: _as_config(v) for name, v in value.keywords.items()}
        return {"_target_": value.func.schedule_target, "_partial_": True, **keywords}
    if hasattr(value, "schedule_target"):  # a factory passed as is, in Python
        return {"_target_": value.schedule_target, "_partial_": True}
    if isinstance(value, Mapping):
        return {str(name): _as_config(v) for name, v in value.items()}
    return value


def _float(step):
    return ops.cast(step, "float32")


@schedule_factory
def constant(value: float, *, steps_per_epoch: int = 1, total_steps: int | None = None) -> StepFn:
    """lr(step) = value.

    Args:
        value: the learning rate, > 0.
        steps_per_epoch: unused; every schedule accepts the run-time arguments.
        total_steps: unused.
    """
    value = check_lr("value", value)
    return lambda step: ops.zeros_like(_float(step)) + value


# Both warm-ups (this one and `warmup_then_decay`) accept an initial LR above the one they reach, and ramp down to
# it. The LR range test's own grid (`lrsweep.range_test`: final_lr in {steepest, min/10}, and min/10 may be below
# steepest) sweeps such schedules on purpose, and a sweep is refused whole if one of its jobs is; the tutorial's
# scheduler draws the same line either way.


@schedule_factory
def linear_warmup(
    initial_lr: float,
    final_lr: float,
    warmup_epochs: int,
    *,
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> StepFn:
    """The tutorial's per-epoch linear warm-up, then held at `final_lr`.

        e = floor(step / steps_per_epoch)
        lr(e) = initial_lr + min(e, warmup_epochs - 1) * (final_lr - initial_lr) / (warmup_epochs - 1)

    so epoch 0 trains at `initial_lr` and epoch `warmup_epochs - 1` at `final_lr`. The tutorial's scheduler
    keeps adding the increment after the warm-up; here the LR is held at `final_lr` from then on. An `initial_lr`
    above `final_lr` ramps down instead, as in `warmup_then_decay`.

    Args:
        initial_lr: learning rate of the first epoch, > 0.
        final_lr: learning rate reached at epoch `warmup_epochs - 1` and held after, > 0.
        warmup_epochs: number of epochs the warm-up spans, >= 2.
        steps_per_epoch: optimizer steps in one epoch (batches), >= 1.
        total_steps: unused.
    """
    initial_lr = check_lr("initial_lr", initial_lr)
    final_lr = check_lr("final_lr", final_lr)
    warmup_epochs = check_count("warmup_epochs", warmup_epochs, 2, " for a linear warm-up")
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    delta = (final_lr - initial_lr) / (warmup_epochs - 1)

    def schedule(step):
        epoch = ops.floor(_float(step) / steps_per_epoch)
        return initial_lr + ops.minimum(epoch, warmup_epochs - 1) * delta

    return schedule


def join(pieces: Sequence[StepFn], boundaries: Sequence[int]) -> StepFn:
    """Runs the pieces one after another, each on its own local step (optax `join_schedules`).

        lr(step) = pieces[i](step - boundaries[i - 1])   for boundaries[i - 1] <= step < boundaries[i]

    with boundaries[-1] = 0 and no end to the last piece. A boundary equal to the one before skips a piece.

    Args:
        pieces: step functions, each starting from its local step 0.
        boundaries: the global steps where pieces 1, 2, ... take over, non-decreasing, one fewer than `pieces`.
    """
    if len(boundaries) != len(pieces) - 1:
        raise ValueError(
            f"`boundaries` must have one entry fewer than `pieces` ({len(pieces)}). Received: boundaries={boundaries!r}"
        )
    if any(b < 0 for b in boundaries) or list(boundaries) != sorted(boundaries):
        raise ValueError(f"`boundaries` must be non-decreasing steps >= 0. Received: boundaries={boundaries!r}")

    def schedule(step):
        step = _float(step)
        lr = pieces[0](step)
        for boundary, piece in zip(boundaries, pieces[1:], strict=True):
            # Both branches are evaluated: clamp so a piece never sees a negative local step.
            lr = ops.where(step < boundary, lr, piece(ops.maximum(step - boundary, 0.0)))
        return lr

    return schedule


def per_epoch(fn: StepFn, steps_per_epoch: int) -> StepFn:
    """Holds `fn` through each epoch at its value on the epoch's first step: lr(step) = fn(spe * floor(step / spe))."""
    return lambda step: fn(ops.floor(_float(step) / steps_per_epoch) * steps_per_epoch)


# Warm-up shapes: the fraction of the way from `initial_lr` to the peak after a fraction x = t / length of the
# warm-up. The exponential's time constant is a fifth of the warm-up, so it is within e^-5 (0.7%) of the peak
# when what follows takes over.
EXPONENTIAL_PERIODS = 5.0
WARMUP_SHAPES: dict[str, Callable[[Any], Any]] = {
    "linear": lambda x: x,
    "exponential": lambda x: -ops.expm1(-EXPONENTIAL_PERIODS * x),
    "cosine": lambda x: 0.5 - 0.5 * ops.cos(math.pi * x),
}
LENGTH_UNITS = ("step", "epoch", "fraction")
UNITS = ("step", "epoch")
WARMUP_KEYS = ("shape", "initial_lr", "length", "length_unit")


def warmup_steps_of(length: Any, length_unit: Any, steps_per_epoch: int, total_steps: int) -> int:
    """A warm-up length in whole optimizer steps: `length` steps, epochs or fraction of training, rounded.

    Any positive length lasts at least one step; 0 means no warm-up.
    """
    length_unit = check_choice("warmup.length_unit", length_unit, LENGTH_UNITS)
    high = 1.0 if length_unit == "fraction" else None
    length = check_number("warmup.length", length, 0.0, high)
    steps = length * {"step": 1, "epoch": steps_per_epoch, "fraction": total_steps}[length_unit]
    if steps > MAX_STEPS:
        raise ValueError(
            f"`warmup.length` is {steps:.3g} steps, more than an optimizer's step counter holds ({MAX_STEPS}): "
            f"choose a shorter warm-up. Received: warmup.length={length!r}, warmup.length_unit={length_unit!r}"
        )
    return max(round(steps), 1) if steps > 0 else 0


def _then(decay: Callable[..., Schedule] | None, peak_lr: float, warmup_steps: int, **run_time) -> Schedule:
    """Builds what follows the warm-up; it starts at `peak_lr` and runs for the rest of training."""
    decay = decay or hold
    if not callable(decay):
        raise ValueError(f"`decay` must be a schedule factory (a `_partial_` config node). Received: decay={decay!r}")
    decay_steps = max(run_time["total_steps"] - warmup_steps, 1)
    return decay(
        peak_lr=peak_lr, decay_steps=decay_steps, warmup_steps=warmup_steps, steps_per_epoch=run_time["steps_per_epoch"]
    )


@schedule_factory
def warmup_then_decay(
    peak_lr: float,
    warmup: Mapping[str, Any],
    decay: Callable[..., Schedule] | None = None,
    unit: str = "step",
    *,
    steps_per_epoch: int,
    total_steps: int,
) -> StepFn:
    """A warm-up from `initial_lr` to `peak_lr`, then `decay` from `peak_lr`, each on its local step.

        W = warm-up length in steps
        lr(step) = initial_lr + (peak_lr - initial_lr) * shape(step / W)   for step < W
        lr(step) = decay(step - W)                                          for step >= W, decay(0) = peak_lr

    with shape(x) = x (linear), 1 - exp(-5 x) (exponential: tau = W / 5), (1 - cos(pi x)) / 2 (cosine).
    An `initial_lr` above `peak_lr` ramps down to it instead, as in `linear_warmup`.
    With `unit="epoch"` the LR is held through each epoch at its value on the epoch's first step, so the
    tutorial's per-epoch warm-up 0.005 -> 0.01 over 5 epochs is `length=4, length_unit=epoch`.

    Args:
        peak_lr: the learning rate the warm-up reaches and the decay starts from, > 0.
        warmup: `shape` (linear | exponential | cosine), `initial_lr` (>= 0; None: 0 per step, and
            per epoch peak_lr / (n + 1) for n epochs of warm-up, so that the first epoch trains; 0 is refused per
            epoch), `length` (>= 0, 0 for no warm-up) and `length_unit` (step | epoch | fraction of training, <= 1);
            rounded to whole steps.
        decay: a factory of what follows (`hold`, `cosine_decay`, ...) awaiting `peak_lr`, `decay_steps`,
            `warmup_steps` and `steps_per_epoch`; None holds `peak_lr`.
        unit: `step` (the LR changes every optimizer step) or `epoch` (once per epoch).
        steps_per_epoch: optimizer steps in one epoch, >= 1.
        total_steps: optimizer steps in the whole training, >= 1.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    unit = check_choice("unit", unit, UNITS)
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    total_steps = check_count("total_steps", total_steps, 1)
    if not isinstance(warmup, Mapping) or sorted(warmup) != sorted(WARMUP_KEYS):
        keys = sorted(warmup) if isinstance(warmup, Mapping) else warmup
        raise ValueError(f"`warmup` must have the keys {', '.join(WARMUP_KEYS)}. Received: warmup={keys!r}")
    shape = WARMUP_SHAPES[check_choice("warmup.shape", warmup["shape"], tuple(WARMUP_SHAPES))]
    warmup_steps = warmup_steps_of(warmup["length"], warmup["length_unit"], steps_per_epoch, total_steps)
    held_epochs = -(-warmup_steps // steps_per_epoch)  # epochs that start inside the warm-up (per-epoch unit)
    if warmup["initial_lr"] is None:  # per step: from 0; per epoch: the first epoch must train, so peak / (n + 1)
        initial_lr = 0.0 if unit == "step" or warmup_steps == 0 else peak_lr / (held_epochs + 1)
    else:
        initial_lr = check_lr("warmup.initial_lr", warmup["initial_lr"], zero_ok=True)
    if unit == "epoch" and warmup_steps > 0 and initial_lr == 0:
        raise ValueError(
            "`warmup.initial_lr` must be > 0 with unit=epoch: the LR is held through each epoch, so the whole first "
            f"epoch would train at LR 0. Set schedule.warmup.initial_lr=null (default: peak_lr / {held_epochs + 1} "
            f"= {peak_lr / (held_epochs + 1):g} here) or a value > 0, or use schedule.unit=step to ramp up from 0 "
            "within the epoch. Received: warmup.initial_lr=0.0"
        )
    after = _then(decay, peak_lr, warmup_steps, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    def ramp(step):
        return initial_lr + (peak_lr - initial_lr) * shape(step / max(warmup_steps, 1))

    schedule = join([ramp, after], [warmup_steps])
    return per_epoch(schedule, steps_per_epoch) if unit == "epoch" else schedule


UNTUNED_RULES = ("linear", "exponential")


@schedule_factory
def untuned_warmup(
    beta_2: float | None,
    peak_lr: float,
    rule: str = "linear",
    decay: Callable[..., Schedule] | None = None,
    unit: str = "step",
    *,
    steps_per_epoch: int,
    total_steps: int,
) -> StepFn:
    """Ma & Yarats (2019)'s untuned warm-up for Adam, from the optimizer's beta_2, then `decay` from `peak_lr`.

        tau = 1 / (1 - beta_2)
        linear:       lr(step) = peak_lr * (step + 1) / (2 tau)           until it reaches peak_lr (2 tau steps)
        exponential:  lr(step) = peak_lr * (1 - exp(-(step + 1) / tau))   for the first 5 tau steps

    then lr(step) = decay(step - W) with W the warm-up's length in steps. The paper's step t counts from 1; the
    optimizer's from 0, hence `step + 1`: the first update already moves. The exponential rule multiplies the
    LR for all of training in the paper; here it hands over after 5 tau, within e^-5 (0.7%) of the peak.

    Args:
        beta_2: the optimizer's second-moment decay, in (0, 1), read from the optimizer config.
        peak_lr: the learning rate after the warm-up, > 0.
        rule: `linear` (over 2 / (1 - beta_2) steps) or `exponential` (tau = 1 / (1 - beta_2)).
        decay: a factory of what follows, as for `warmup_then_decay`; None holds `peak_lr`.
        unit: `step` or `epoch` (held through each epoch at its value on the epoch's first step).
        steps_per_epoch: optimizer steps in one epoch, >= 1.
        total_steps: optimizer steps in the whole training, >= 1.
    """
    if beta_2 is None:
        raise ValueError(
            "`beta_2` must be read from an Adam-type optimizer (`optimizer.beta_2`, e.g. optimizer=adam); "
            "the chosen optimizer has none. Received: beta_2=None"
        )
    beta_2 = check_number("beta_2", beta_2, 0.0, 1.0, low_open=True, high_open=True)
    peak_lr = check_lr("peak_lr", peak_lr)
    rule = check_choice("rule", rule, UNTUNED_RULES)
    unit = check_choice("unit", unit, UNITS)
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    total_steps = check_count("total_steps", total_steps, 1)
    tau = 1.0 / (1.0 - beta_2)
    if rule == "linear":
        span = 2.0 * tau  # (step + 1) / span reaches 1 at step = span - 1

        def ramp(step):
            return peak_lr * ops.minimum((step + 1.0) / span, 1.0)
    else:
        span = EXPONENTIAL_PERIODS * tau

        def ramp(step):
            return peak_lr * -ops.expm1(-(step + 1.0) / tau)  # 1 - exp(-x), exact for small x in float32

    # Round away float noise (2 / (1 - 0.999) = 1999.9999999999982) before taking whole steps.
    warmup_steps = max(math.ceil(round(span, 6)) - 1, 0)
    after = _then(decay, peak_lr, warmup_steps, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    schedule = join([ramp, after], [warmup_steps])
    return per_epoch(schedule, steps_per_epoch) if unit == "epoch" else schedule


# What follows a warm-up. Each starts at `peak_lr` on its local step t = 0 and runs `decay_steps` steps (the rest
# of training); `warmup_steps` and `steps_per_epoch` are passed too, for the ones that need them.


@schedule_factory
def hold(*, peak_lr: float, decay_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1) -> StepFn:
    """lr(t) = peak_lr: no decay.

    Args:
        peak_lr: the learning rate, > 0.
        decay_steps: unused.
        warmup_steps: unused.
        steps_per_epoch: unused.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    return lambda step: ops.zeros_like(_float(step)) + peak_lr


def _decay_span(decay_steps: Any) -> int:
    return check_count("decay_steps", decay_steps, 1)


@schedule_factory
def cosine_decay(
    min_lr: float = 0.0, *, peak_lr: float, decay_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1
) -> StepFn:
    """Half a cosine from `peak_lr` to `min_lr` over the rest of training (Loshchilov & Hutter, no restarts).

        lr(t) = min_lr + (peak_lr - min_lr) * (1 + cos(pi * min(t, D) / D)) / 2,   D = decay_steps

    Args:
        min_lr: the learning rate at the end, in [0, peak_lr].
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: D, the steps it spans, >= 1.
        warmup_steps: unused.
        steps_per_epoch: unused.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    min_lr = check_number("min_lr", min_lr, 0.0, peak_lr)
    span = _decay_span(decay_steps)
    return lambda step: (
        min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(_float(step), span) / span))
    )


@schedule_factory
def linear_decay(
    min_lr: float = 0.0, *, peak_lr: float, decay_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1
) -> StepFn:
    """A straight line from `peak_lr` to `min_lr` over the rest of training.

        lr(t) = peak_lr + (min_lr - peak_lr) * min(t, D) / D,   D = decay_steps

    Args:
        min_lr: the learning rate at the end, in [0, peak_lr].
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: D, the steps it spans, >= 1.
        warmup_steps: unused.
        steps_per_epoch: unused.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    min_lr = check_number("min_lr", min_lr, 0.0, peak_lr)
    span = _decay_span(decay_steps)
    return lambda step: peak_lr + (min_lr - peak_lr) * ops.minimum(_float(step), span) / span


@schedule_factory
def step_decay(
    gamma: float = 0.5,
    every_epochs: float = 1.0,
    *,
    peak_lr: float,
    decay_steps: int,
    warmup_steps: int = 0,
    steps_per_epoch: int = 1,
) -> StepFn:
    """Multiplies the LR by `gamma` every `every_epochs` epochs (PyTorch's StepLR).

        lr(t) = peak_lr * gamma ** floor(t / (every_epochs * steps_per_epoch))

    Args:
        gamma: the factor, in (0, 1].
        every_epochs: epochs between drops, > 0 (0.5: twice an epoch).
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: unused: it keeps dropping until training ends.
        warmup_steps: unused.
        steps_per_epoch: optimizer steps in one epoch, >= 1.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    gamma = check_number("gamma", gamma, 0.0, 1.0, low_open=True)
    every_epochs = check_number("every_epochs", every_epochs, 0.0, low_open=True)
    interval = every_epochs * check_count("steps_per_epoch", steps_per_epoch, 1)
    log_gamma = math.log(gamma)
    return lambda step: peak_lr * ops.exp(log_gamma * ops.floor(_float(step) / interval))


@schedule_factory
def exponential_decay(
    decay_rate: float = 0.5, *, peak_lr: float, decay_steps: int, warmup_steps: int = 0, steps_per_epoch: int = 1
) -> StepFn:
    """Smooth exponential decay by `decay_rate` per epoch (Keras' ExponentialDecay, not staircase).

        lr(t) = peak_lr * decay_rate ** (t / steps_per_epoch)

    Args:
        decay_rate: the factor per epoch, in (0, 1].
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: unused: it keeps decaying until training ends.
        warmup_steps: unused.
        steps_per_epoch: optimizer steps in one epoch, >= 1.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    log_rate = math.log(check_number("decay_rate", decay_rate, 0.0, 1.0, low_open=True))
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    return lambda step: peak_lr * ops.exp(log_rate * _float(step) / steps_per_epoch)


@schedule_factory
def inverse_sqrt_decay(
    timescale_epochs: float | None = None,
    *,
    peak_lr: float,
    decay_steps: int,
    warmup_steps: int = 0,
    steps_per_epoch: int = 1,
) -> StepFn:
    """The Transformer's inverse square root decay (Vaswani et al. 2017).

        lr(t) = peak_lr / sqrt(1 + t / T)

    with T the timescale in steps; by default T = the warm-up's length W, which makes it
    peak_lr * sqrt(W / step) on the global step, the Transformer's rule.

    Args:
        timescale_epochs: T in epochs, > 0; None: the warm-up's length (which must then be > 0).
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: unused: it keeps decaying until training ends.
        warmup_steps: the warm-up's length in steps, the default timescale.
        steps_per_epoch: optimizer steps in one epoch, >= 1.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch, 1)
    if timescale_epochs is None:
        if not warmup_steps:
            raise ValueError(
                "`timescale_epochs` must be set (> 0) for an inverse square root decay without warm-up. "
                "Received: timescale_epochs=None"
            )
        timescale = float(warmup_steps)
    else:
        timescale = check_number("timescale_epochs", timescale_epochs, 0.0, low_open=True) * steps_per_epoch
    return lambda step: peak_lr * ops.rsqrt(1.0 + _float(step) / timescale)


@schedule_factory
def stable_decay(
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
    *,
    peak_lr: float,
    decay_steps: int,
    warmup_steps: int = 0,
    steps_per_epoch: int = 1,
) -> StepFn:
    """Warmup-stable-decay's last two phases: hold `peak_lr`, then cool down linearly to `min_lr` at the end.

        C = round(decay_fraction * D), S = D - C
        lr(t) = peak_lr                                         for t < S
        lr(t) = peak_lr + (min_lr - peak_lr) * min(t - S, C) / C  for t >= S

    Args:
        min_lr: the learning rate at the end, in [0, peak_lr].
        decay_fraction: the share of what follows the warm-up spent cooling down, in (0, 1].
        peak_lr: the learning rate at t = 0, > 0.
        decay_steps: D, the steps it spans (the rest of training), >= 1.
        warmup_steps: unused.
        steps_per_epoch: unused.
    """
    peak_lr = check_lr("peak_lr", peak_lr)
    min_lr = check_number("min_lr", min_lr, 0.0, peak_lr)
    decay_fraction = check_number("decay_fraction", decay_fraction, 0.0, 1.0, low_open=True)
    span = _decay_span(decay_steps)
    cooldown = max(round(decay_fraction * span), 1)
    stable = span - cooldown
    return join(
        [
            lambda step: ops.zeros_like(step) + peak_lr,
            lambda step: peak_lr + (min_lr - peak_lr) * ops.minimum(step, cooldown) / cooldown,
        ],
        [stable],
    )


@keras.saving.register_keras_serializable(package="lrsweep")
class KerasSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Adapts a `Schedule` to Keras: the optimizer evaluates it at its own iteration count."""

    def __init__(self, schedule: Schedule):
        super().__init__()
        self.schedule = schedule

    def __call__(self, step):
        return ops.cast(self.schedule(step), "float32")

    def get_config(self) -> dict[str, Any]:
        return {"schedule": dict(self.schedule.config)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> KerasSchedule:
        from hydra.utils import instantiate

        return cls(instantiate(config["schedule"]))


@schedule_factory
def lr_range(min_lr: float = 1e-6, max_lr: float = 10.0, *, steps_per_epoch: int = 1, total_steps: int) -> StepFn:
    """The LR range test's ramp (Smith 2017, fastai's `lr_find`): exponential from `min_lr` to `max_lr`.

        lr(step) = min_lr * (max_lr / min_lr) ** (min(step, T - 1) / (T - 1)),   T = total_steps

    so the first step trains at `min_lr`, the last at `max_lr`, and the LR grows by the same factor every step.
    `lrsweep.range_test` records the loss at each step and stops when it explodes.

    Args:
        min_lr: the learning rate of the first step, > 0.
        max_lr: the learning rate of the last step, > min_lr.
        steps_per_epoch: unused.
        total_steps: T, optimizer steps in the whole training, >= 2.
    """
    min_lr = check_lr("min_lr", min_lr)
    max_lr = check_lr("max_lr", max_lr)
    if max_lr <= min_lr:
        raise ValueError(
            f"`max_lr` must be > min_lr={min_lr!r} for a range test (the LR grows from min_lr to max_lr). "
            f"Received: max_lr={max_lr!r}"
        )
    total_steps = check_count("total_steps", total_steps, 2, " for a range test (raise data.train_size)")
    span = total_steps - 1
    log_ratio = math.log(max_lr / min_lr)
    return lambda step: min_lr * ops.exp(log_ratio * ops.minimum(_float(step), span) / span)
