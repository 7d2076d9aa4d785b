"""conscience: a model's own frozen copy as its conscience (Emergent Alignment)."""

from .conscience import Candidate, Conscience, Response
from .errors import ConscienceError
from .framings import Framing, load_framings
from .models import LoadedModel, load_model
from .verdict import ReviewItem, VerbalReviewer, Verdict

__all__ = [
    "Candidate", "Conscience", "ConscienceError", "Framing", "LoadedModel", "ReviewItem",
    "Response", "Verdict", "VerbalReviewer", "load_framings", "load_model",
]
__version__ = "0.1.0"
