"""Where calibration triples come from: ``conscience calibrate --data`` names one source or
several, comma-separated, fitted as one set.

A source is a JSONL of triples (:func:`conscience.discernment.load_triples`) or
``code-generator[:N]``: the code-hacking generator's train split as contrast triples, at most
``N`` per vulnerability class (:mod:`conscience.tasks.code_hacking.contrast`). For example
``--data src/conscience/data/contrast.jsonl,code-generator``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..discernment import Triple, load_triples
from ..errors import ConscienceError, DataFormatError

CODE_SOURCE = "code-generator"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:  # streamed: a data file is not read into memory to be hashed
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def source_parts(data: str | Path) -> list[str]:
    """The sources ``data`` names; an existing file is one source even if its name has a comma."""
    text = str(data)
    if Path(text).is_file():
        return [text]
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise ConscienceError(f"--data {text!r} has an empty source; separate sources with single commas")
    return parts


def is_code_source(part: str) -> bool:
    return part.partition(":")[0] == CODE_SOURCE


def code_cap(part: str) -> int | None:
    """The cap ``N`` of a ``code-generator[:N]`` source (None: the whole train split)."""
    cap = part.partition(":")[2]
    if not cap:
        return None
    if not cap.isdigit() or int(cap) < 1:
        raise ConscienceError(f"{part!r}: the cap after '{CODE_SOURCE}:' is a count of triples per class (>= 1)")
    return int(cap)


def _load_part(part: str) -> list[Triple]:
    if not is_code_source(part):
        return load_triples(part)
    from ..tasks.code_hacking.contrast import code_contrast_triples  # lazy: the templates are many

    return code_contrast_triples(code_cap(part))


def load_sources(data: str | Path) -> list[Triple]:
    """Every source's triples, in order; ids must stay unique across sources."""
    triples: list[Triple] = []
    origin: dict[str, str] = {}
    for part in source_parts(data):
        for t in _load_part(part):
            if t.id in origin:
                raise DataFormatError(f"{part}: id {t.id!r} also appears in {origin[t.id]}")
            origin[t.id] = part
            triples.append(t)
    return triples


def sources_digest(data: str | Path) -> str:
    """A key for the feature cache: one file keeps its own digest (caches stay valid); the
    generator's triples are keyed by their content, so changed templates are read afresh."""
    digests = []
    for part in source_parts(data):
        if not is_code_source(part):
            digests.append(file_digest(Path(part)))
        else:
            blob = json.dumps([t.to_dict() for t in _load_part(part)], sort_keys=True)
            digests.append(hashlib.sha256(blob.encode()).hexdigest()[:16])
    return digests[0] if len(digests) == 1 else hashlib.sha256("|".join(digests).encode()).hexdigest()[:16]


def sources_name(data: str | Path) -> str:
    """What a card records as its data: the file names and generator sources."""
    return ",".join(p if is_code_source(p) else Path(p).name for p in source_parts(data))
