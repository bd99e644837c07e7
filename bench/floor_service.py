"""The *floor* service of the serving benchmark: a minimal BentoML 1.4 service that reads the request body
and answers ``{}`` — what any BentoML service on this host pays for HTTP, body transfer and JSON before doing
work. Started by ``bench/bench_detector.py`` exactly like ours (``python -m bentoml serve``, own
``BENTOML_HOME``, same worker count, same BentoML configuration, FastAPI mounted with ``@bentoml.asgi_app``)::

    BENTOML_HOME=$(mktemp -d) python -m bentoml serve bench.floor_service:FloorService --port 3001
"""

from __future__ import annotations

import bentoml
from fastapi import FastAPI, Request

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


@app.post("/v1/predict")
async def predict(request: Request) -> dict[str, int]:
    await request.body()  # the whole body in memory, as any service that parses it must hold it
    return {}


@bentoml.service(
    name="floor",
    workers=2,
    traffic={"timeout": 605},
    metrics={"enabled": False},
    tracing={"excluded_urls": [".*"]},
)
@bentoml.asgi_app(app, path="/")
class FloorService:
    """Reads the body, answers ``{}``."""
