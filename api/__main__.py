"""``python -m api``: the API on the configured host and port, in ``API_WORKERS`` processes
(uvicorn's workers share the socket; each loads and follows the served version itself, and has
its own Kafka producer). With more than one, every worker counts its metrics in files under
``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory unless set), and ``/metrics``, whichever worker
answers, adds them up."""

import os
import tempfile

import uvicorn

from streamlearn.settings import get_settings

settings = get_settings()
workers = settings.api.workers
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Before any worker starts: prometheus_client reads it when a worker imports it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streamlearn-api-metrics-")
uvicorn.run(
    "api.app:app",
    host=settings.api.host,
    port=settings.api.port,
    workers=workers,
    log_level="info",
    access_log=settings.api.access_log,
)
