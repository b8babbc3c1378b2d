"""``python -m api``: one uvicorn worker on the configured host and port."""

import uvicorn

from streamlearn.settings import get_settings

settings = get_settings()
uvicorn.run(
    "api.app:app",
    host=settings.api.host,
    port=settings.api.port,
    log_level="info",
    access_log=settings.api.access_log,
)
