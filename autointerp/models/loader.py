"""Load a causal language model offline and wrap it in a TransformerLens ``TransformerBridge``.

Accepted specs, resolved in this order (a registry of resolvers, first match wins):

* an alias of an embedded model (``smollm2-135m``), fetched once into the user cache;
* a path to a ``.gguf`` file: dequantized by transformers' GGUF support, saved once as a
  plain safetensors copy in the user cache so that later loads take well under a second;
* a path to a local Hugging Face model folder (``config.json`` + ``*.safetensors``);
* a hub id (``org/name``), read from the local Hugging Face cache only.

Weights are only ever read from safetensors or GGUF (``use_safetensors=True``): a pickled
``pytorch_model.bin`` is refused, since unpickling runs code from the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autointerp.models.embedded import MODEL_ALIASES, cache_root, sha256_file

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
}


class ModelNotFoundError(FileNotFoundError):
    """The model spec names nothing that can be loaded offline."""


@dataclass
class LoadedModel:
    """A language model ready for hooking.

    ``bridge`` runs the model with TransformerLens hook names (``blocks.15.hook_out``);
    ``hf_model`` is the underlying transformers model (the bridge wraps it, no copy).
    """

    spec: str
    source: Path
    """the local folder the weights were read from (safetensors)."""
    checksum: str
    """sha256 identifying the weights (of the GGUF file, or of the safetensors files)."""
    bridge: object
    tokenizer: object
    hf_model: torch.nn.Module
    device: str
    dtype: torch.dtype
    n_layers: int = field(init=False)
    d_model: int = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.hf_model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.d_model = int(cfg.hidden_size)

    def describe(self) -> dict:
        return {"spec": self.spec, "source": str(self.source), "sha256": self.checksum,
                "n_layers": self.n_layers, "d_model": self.d_model, "dtype": str(self.dtype).split(".")[-1]}


# --------------------------------------------------------------------------------------
# Resolvers: spec -> (local safetensors folder, checksum). Each returns None if the spec
# is not of its kind.

Resolver = Callable[[str], "tuple[Path, str] | None"]
_RESOLVERS: list[Resolver] = []


def _resolver(fn: Resolver) -> Resolver:
    _RESOLVERS.append(fn)
    return fn


@_resolver
def _resolve_alias(spec: str) -> tuple[Path, str] | None:
    asset = MODEL_ALIASES.get(spec)
    if asset is None:
        return None
    gguf = asset.ensure()
    return _converted_gguf(gguf, known_sha=asset.sha256), asset.sha256


@_resolver
def _resolve_gguf(spec: str) -> tuple[Path, str] | None:
    if not spec.endswith(".gguf"):
        return None
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {path}")
    sha = sha256_file(path)
    return _converted_gguf(path, known_sha=sha), sha


@_resolver
def _resolve_folder(spec: str) -> tuple[Path, str] | None:
    path = Path(spec).expanduser()
    if not path.is_dir():
        if os.sep in spec and (spec.startswith((".", "/", "~")) or path.suffix):
            raise ModelNotFoundError(f"model folder not found: {path}")
        return None
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder")
    return path, folder_checksum(path)


@_resolver
def _resolve_hub_id(spec: str) -> tuple[Path, str] | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(spec, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"model {spec!r} is neither an alias ({', '.join(MODEL_ALIASES)}), a local folder, a .gguf "
            f"file, nor in the local Hugging Face cache, and autointerp runs offline. Fix: on a machine "
            f"with network run `huggingface-cli download {spec}` and copy ~/.cache/huggingface here, "
            f"or pass the path of a local model folder or .gguf file.") from exc
    return path, folder_checksum(path)


def folder_checksum(path: Path) -> str:
    """sha256 over the names and sha256s of a folder's safetensors files (sorted)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(
            f"{path} holds no *.safetensors weights; autointerp loads weights only from safetensors "
            f"or GGUF (pickled .bin files can run code when loaded)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def gguf_architecture(path: Path) -> str:
    """The ``general.architecture`` of a GGUF file (``llama``, ``gemma3`` ...), read from its header."""
    import gguf

    try:
        field = gguf.GGUFReader(path).fields["general.architecture"]
    except (KeyError, ValueError, OSError) as exc:
        raise ModelNotFoundError(f"{path} is not a readable GGUF file with an architecture: {exc}") from exc
    return field.contents()


def _converted_gguf(gguf: Path, known_sha: str) -> Path:
    """Dequantize a GGUF once into a plain safetensors model folder in the user cache.

    Trap (transformers 5): a model loaded from GGUF carries a GGUF quantizer and refuses
    ``save_pretrained`` although its weights are already dequantized. So we build a plain
    model from the same config, load the state dict strictly and save that.
    """
    out = cache_root() / "converted" / known_sha[:16]
    if (out / "config.json").is_file() and list(out.glob("*.safetensors")):
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = gguf_architecture(gguf)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES:
        raise ModelNotFoundError(
            f"{gguf} is a GGUF of architecture {arch!r}, which transformers cannot read (it reads "
            f"{', '.join(a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ('general', 'tokenizer'))})")
    log.info("dequantizing %s (%s) once into %s", gguf, arch, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = AutoModelForCausalLM.from_config(quant.config, dtype=torch.float32)
    plain.load_state_dict(quant.state_dict(), strict=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if out.exists():  # a half-written folder from a killed run
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def resolve(spec: str) -> tuple[Path, str]:
    """Map a model spec to (local safetensors folder, weights checksum), offline."""
    for resolver in _RESOLVERS:
        found = resolver(spec)
        if found is not None:
            return found
    raise ModelNotFoundError(f"cannot resolve model {spec!r}")  # pragma: no cover - hub resolver raises


def load_model(spec: str, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load ``spec`` (alias, .gguf, folder or cached hub id) and boot a ``TransformerBridge``.

    The bridge switches the model to eager attention so that attention patterns can be
    hooked; hook points such as ``blocks.N.hook_out`` are identical either way.
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    folder, checksum = resolve(spec)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True)
    hf_model.to(device).eval()
    bridge = TransformerBridge.boot_transformers(
        str(folder), hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=torch_dtype)
    bridge.eval()
    return LoadedModel(spec=spec, source=folder, checksum=checksum, bridge=bridge, tokenizer=tokenizer,
                       hf_model=hf_model, device=str(device), dtype=torch_dtype)
