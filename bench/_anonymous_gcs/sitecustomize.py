"""On PYTHONPATH for benchmark subprocesses that talk to the GCS emulator: Beam's gs:// client
connects anonymously at once, in the launching process and in every SDK worker process.

Beam's GcsIO looks up Application Default Credentials first, retried with exponential backoff
(apache_beam.internal.gcp.auth._Credentials: ~30 s when there are none) in every process that
opens a gs:// path, before it falls back to an anonymous client. This sets that lookup's cache to
"none found" as the module is imported (tests/test_cloud.py's gcs fixture does the same in-process).
"""

import importlib.abc
import importlib.util
import sys

_TARGET = "apache_beam.internal.gcp.auth"


class _NoCredentialsLookup(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_then_preset(module):
            exec_module(module)
            module._Credentials._credentials_init = True
            module._Credentials._credentials = None

        spec.loader.exec_module = exec_then_preset
        return spec


sys.meta_path.insert(0, _NoCredentialsLookup())
