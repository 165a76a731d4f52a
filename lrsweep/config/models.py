"""The schemas of the model options (conf/model/): each builder's arguments with their types and ranges."""

from __future__ import annotations

from dataclasses import dataclass

from lrsweep.config.ranges import Count, spec


@dataclass
class Mlp:
    """conf/model/mlp.yaml."""

    _target_: str = spec()
    hidden_units: int = spec(allowed=Count(1))
