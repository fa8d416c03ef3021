"""What each package may import: the service runs without torch (the import contracts of `make lint`
say the same statically; this checks it at run time, in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "code",
    [
        "import service.api, sys; assert 'torch' not in sys.modules",
        # building the app and loading a bundle (feature tables, onnxruntime, retrieval) stay torch-free
        "import sys; from service.api import create_app; from service.model.bundle import LoadedBundle; "
        "from service.core.settings import Settings; create_app(); LoadedBundle.load(sys.argv[1], Settings()); "
        "assert 'torch' not in sys.modules, 'torch was imported'",
        "import unirank.core.features, unirank.core.spec, unirank.core.tables, sys; assert 'torch' not in sys.modules",
    ],
)
def test_the_service_never_imports_torch(code, bundle_dir):
    done = subprocess.run([sys.executable, "-c", code, str(bundle_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
