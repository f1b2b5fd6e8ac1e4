"""Command modules that share their name with a function their package exports.

``embeddings.build`` is the command ``python -m embeddings.build`` and also the function
``from embeddings import build``. Importing the command makes Python rebind the package attribute to
the module, after which ``embeddings.build(config)`` raised "module is not callable". A command module
calls ``share_name_with(__name__, function)`` so that the module, wherever it lands, calls through to the
function, and ``import embeddings.build as cli; cli.main()`` still gives the command.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Callable


class _CommandModule(types.ModuleType):
    """A module that can be called like the function it is named after."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_shared_function"](*args, **kwargs)


def share_name_with(module_name: str, function: Callable[..., Any]) -> None:
    """Make the module ``module_name`` callable as ``function``."""
    module = sys.modules[module_name]
    module._shared_function = function
    module.__class__ = _CommandModule
