"""The schemas of the model options (conf/model/): each builder's arguments with their types and ranges.

Relations between them (a ViT's `width` a multiple of its `heads`, a `patch_size` that divides the image) are the
builders' own checks (`lrsweep.ml.models`), made when a job is checked, before any run.
"""

from __future__ import annotations

from dataclasses import dataclass

from lrsweep.config.ranges import Choice, Count, Number, spec

UNITS = Count(1)


@dataclass
class Mlp:
    """conf/model/mlp.yaml."""

    _target_: str = spec()
    hidden_units: int = spec(allowed=UNITS)


@dataclass
class Cnn:
    """conf/model/cnn.yaml."""

    _target_: str = spec()
    channels: int = spec(allowed=Count(1, " (the first block's filters; each next block doubles them)"))
    blocks: int = spec(allowed=Count(1, " (conv blocks, each halving the image)"))


@dataclass
class Vit:
    """conf/model/vit.yaml."""

    _target_: str = spec()
    patch_size: int = spec(allowed=UNITS)
    width: int = spec(allowed=UNITS)
    depth: int = spec(allowed=Count(1, " (transformer blocks)"))
    heads: int = spec(allowed=UNITS)
    mlp_ratio: int = spec(allowed=UNITS)
    norm: str = spec(allowed=Choice(("post", "pre")))
    pool: str = spec(allowed=Choice(("cls", "mean")))
    dropout: float = spec(allowed=Number(0.0, 1.0, high_open=True))
