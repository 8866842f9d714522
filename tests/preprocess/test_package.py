"""The preprocess package: every public name resolves, lazily (``import preprocess`` loads no kernel)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_preprocess_package_resolves_every_public_name_lazily():
    script = (
        "import sys, preprocess\n"
        "assert 'preprocess.image' not in sys.modules\n"
        "from preprocess import Tokenizer, load_image, SUPPORTED_BUDGETS\n"
        "assert 'preprocess.image_io' in sys.modules and 'preprocess.video' not in sys.modules\n"
        "assert set(preprocess.__all__) == set(preprocess._SOURCES)  # one list of names, no drift\n"
        "missing = [n for n in preprocess.__all__ if getattr(preprocess, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert preprocess.image.patchify is not None  # a submodule as an attribute\n"
        "try:\n"
        "    preprocess.no_such_name\n"
        "except AttributeError as exc:\n"
        "    assert 'no_such_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
