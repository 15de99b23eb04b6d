"""The service's config file (warmtransfer.toml): models, loading with located errors, and
builders of the objects that run.

    config = load_config("warmtransfer.toml")     # ConfigError: file:line: key: problem; fix
    engine = config.build_engine()                 # or engine_from_config(config)
    plan = config.plan("support")                  # the global allow-list applied

See `model` for the schema and the allow-list rule, `load` for secrets from the environment and
relative paths, `positions` for how lines are found.
"""

from warmtransfer.config.build import (
    engine_from_config,
    register_trunk,
    summarizer_from_config,
)
from warmtransfer.config.errors import ConfigError, Located, Problem
from warmtransfer.config.load import check_config, load_config, resolve_agent
from warmtransfer.config.model import Config

__all__ = [
    "Config",
    "ConfigError",
    "Located",
    "Problem",
    "check_config",
    "engine_from_config",
    "load_config",
    "register_trunk",
    "resolve_agent",
    "summarizer_from_config",
]
