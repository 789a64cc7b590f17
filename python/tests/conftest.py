import sys

import pytest


@pytest.fixture
def path(tmp_path):
    """A path for a new store."""
    return str(tmp_path / "test.mapkv")


def run_python(code, *args, **kwargs):
    """Start `code` in a new interpreter (a real separate process)."""
    import subprocess

    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], **kwargs)
