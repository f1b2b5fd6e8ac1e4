import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = [("embeddings", "build"), ("embeddings", "merge"), ("embeddings", "train"), ("embeddings", "finetune"),
          ("retrieval", "evaluate")]


@pytest.mark.parametrize("first", ["functions", "commands"])
def test_exported_functions_stay_callable_beside_their_commands(first):
    """Regression: importing a command module (``embeddings.build``) rebound the package's exported function of
    the same name to the module; ``from embeddings import build; build(config)`` then raised 'module is not
    callable' (seen in the full suite for build, merge and train; evaluate and finetune had the same trap)."""
    functions = "".join(f"from {package} import {name}\n" for package, name in SHARED)
    commands = "".join(f"import {package}.{name}\n" for package, name in SHARED)
    check = textwrap.dedent("""
        import importlib, inspect
        for package, name in %r:
            module = importlib.import_module(package + "." + name)
            assert callable(module.main), name
            exported = getattr(importlib.import_module(package), name)
            assert callable(exported), name
            target = getattr(exported, "_shared_function", exported)
            assert inspect.isfunction(target) and target.__name__ == name, (name, target)
        print("ok")
    """ % (SHARED,))
    code = (functions + commands if first == "functions" else commands + functions) + check
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
