"""`bitdistill serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) for packed models on CPU.

    from bitdistill.serve import create_app
    app = create_app("packed/")          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

See docs/serving.md for the routes, limits and error format.
"""

from .app import Limits, create_app
from .model import ClassifyDefaults, defaults_from_task

__all__ = ["ClassifyDefaults", "Limits", "create_app", "defaults_from_task"]
