"""Tests of the serving layer (serving/): pipeline functions, the in-process ASGI app, `bentoml serve`."""
