"""An OpenAI-compatible chat server with the conscience in front of the model.

    conscience serve --model bundled --port 8000 --action revise

``create_app(ServeConfig, backend)`` builds the FastAPI app; ``build_backend`` makes the local
or ``--upstream`` backend. Every answer is reviewed before any byte of it is sent — streaming
included, so a stream starts only after the review.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
