"""The primitive ops (being split into one module per family; for now all in `core`)."""

from .core import *  # noqa: F401,F403
