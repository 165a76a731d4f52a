"""The config"s schema: every option"s keys, types and ranges, registered in Hydra"s ConfigStore."""

__all__ = ["models", "ranges", "schema"]
