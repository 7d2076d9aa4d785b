"""Allowed values, typed once: each set is a ``Literal`` that config fields are annotated with.

:func:`conscience.config.check_fields` refuses a value outside it, and argparse ``choices`` are
read from the same annotation (:func:`conscience.config.choices_of`), so no list is written twice.
This module imports nothing from the package: any module may use it.
"""

from __future__ import annotations

from typing import Literal

#: what the model is used for: the drafting system prompt and the default framings
Mode = Literal["chat", "content", "code"]
Dtype = Literal["float32", "bfloat16", "float16"]
#: auto: latent where a conscience card fits the model, else verbal
VerdictKind = Literal["auto", "verbal", "latent", "combined"]
#: look_back replays the conversation and reuses the draft's cache; third_person quotes it
ReviewFormat = Literal["look_back", "third_person"]
#: which held-out drift triples: select (settings are chosen on them), report (numbers are
#: reported on them) or all
DriftSplit = Literal["all", "select", "report"]
