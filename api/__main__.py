import uvicorn

from streamlearn.settings import get_settings

settings = get_settings()
uvicorn.run("api.app:app", host=settings.api_host, port=settings.api_port, log_level="info")
