FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY broker ./broker
COPY worker ./worker
COPY client_sdk ./client_sdk
COPY examples ./examples
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["python", "-m", "broker", "serve", "--host", "0.0.0.0", "--port", "8080"]
