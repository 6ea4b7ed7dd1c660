"""``voxbridge.asgi:app`` -- the app with settings from the environment.

For operators who run hypercorn themselves::

    VOXBRIDGE_PROVIDER=echo hypercorn -k trio voxbridge.asgi:app

The lifespan opens the call journal (``VOXBRIDGE_DB``, default ``voxbridge.db`` in the working
directory) at startup and flushes and closes it at shutdown. Importing this module also installs
the hypercorn #225 containment (see ``voxbridge.server.containment``) and applies
``gc_threshold``. Prefer ``voxbridge serve``: it adds TCP_USER_TIMEOUT on the listening socket and
drains calls on SIGTERM.
"""

from __future__ import annotations

from .server import VoxbridgeApp
from .server.serve import tune_gc
from .settings import Settings

_settings = Settings.from_env()
tune_gc(_settings)
app = VoxbridgeApp(_settings)
