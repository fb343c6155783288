"""Settings of the test process itself, made before any test module imports gcsfs or google-auth
(both read them at import): nothing a test runs may look beyond 127.0.0.1. Without them gcsfs asks
Google for a bucket's type, and google-auth probes the GCE metadata server, when a test reads a
gs:// path of the local emulator (tests/gcs_emulator.py sets the emulator's own address)."""

import os

os.environ.update({
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:1",
    "GCE_METADATA_IP": "127.0.0.1:1",
})
