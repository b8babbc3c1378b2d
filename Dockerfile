# One image for every streamlearn process; compose picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamlearn streamlearn
COPY topics topics
COPY consumers consumers
COPY api api
RUN pip install --no-cache-dir .
ENV STREAMLEARN_HOME=/var/lib/streamlearn
CMD ["python", "-m", "consumers.loop"]
