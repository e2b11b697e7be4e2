"""The platform's HTTP API (FastAPI): robots, embodiments, uploads, episodes, objects."""
