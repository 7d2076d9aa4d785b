"""The verdict: how the frozen copy judges an answer.

* :mod:`.types` — :class:`ReviewItem`, :class:`Verdict`, the :class:`Reviewer` protocol;
* :mod:`.forward` — one forward pass: log-probs and, when asked, pooled hidden states (KV-cache reuse);
* :mod:`.prompts` — the review prompts, with their rendering as a strategy;
* :mod:`.scores` — answer-word ids and probabilities;
* :mod:`.verbal`, :mod:`.latent`, :mod:`.upstream` — the reviewers (latent and combined read a card);
* :mod:`.code_route` — answers with code read by a card's ``code/`` card;
* :mod:`.card` — the latent card on disk; :mod:`.latent_fit` — its fitting maths;
  :mod:`.calibration` — features, fit and save; :mod:`.calibrate_cli` — ``conscience calibrate``;
* :mod:`.factory` — the reviewer a config asks for, and why.

Only the types and the verbal reviewer are imported here; import the others from their modules.
"""

from .scores import mean_log_odds
from .types import POOLS, REVIEW_FORMATS, Reviewer, ReviewItem, Verdict, is_flagged
from .verbal import VerbalReviewer

__all__ = ["POOLS", "REVIEW_FORMATS", "ReviewItem", "Reviewer", "Verdict", "VerbalReviewer", "is_flagged",
           "mean_log_odds"]
