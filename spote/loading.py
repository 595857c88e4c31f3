"""Loading a frozen VLM from a local folder or an fsspec URI, and picking its adapter.

Remote checkpoints (``s3://bucket/models/x``) are copied once into a local cache; every file's
size (and ETag where the store gives one) is recorded and re-checked, so a changed or truncated
copy is fetched again. Weights load as safetensors only, ``trust_remote_code`` stays off unless
asked, and the model is put in eval mode with gradients off: SPOT-E never updates it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .adapters.base import HFAdapter
from .adapters.llava import LlavaAdapter

DEFAULT_MODEL = Path(__file__).parent / "weights" / "spote-tiny"
CACHE_DIR = Path(os.environ.get("SPOTE_CACHE", Path.home() / ".cache" / "spote" / "models"))


def adapter_registry() -> dict[str, type[HFAdapter]]:
    from .adapters.idefics3 import Idefics3Adapter
    from .adapters.qwen2vl import Qwen2VLAdapter

    return {
        "llava": LlavaAdapter,
        "qwen2_vl": Qwen2VLAdapter,
        "qwen2_5_vl": Qwen2VLAdapter,
        "idefics3": Idefics3Adapter,
        "smolvlm": Idefics3Adapter,
    }


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _fingerprint(info: dict) -> dict:
    etag = info.get("ETag") or info.get("etag")
    return {"size": int(info.get("size") or 0), "etag": etag.strip('"') if isinstance(etag, str) else None}


def fetch_checkpoint(uri: str, storage_options: dict | None = None, cache_dir: Path = CACHE_DIR) -> Path:
    """Copy a remote checkpoint folder to the cache once; re-copy files whose size/ETag changed."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    local = Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    manifest_path = local / ".spote-manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    found = fs.find(root, detail=True)
    if not found:
        raise FileNotFoundError(f"no checkpoint files under {uri}")
    for path, info in found.items():
        rel = path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/")) else Path(path).name
        target = local / rel
        want = _fingerprint(info)
        have = manifest.get(rel)
        if target.exists() and have == want and target.stat().st_size == want["size"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        fs.get(path, str(tmp))
        if tmp.stat().st_size != want["size"]:
            raise IOError(f"integrity check failed for {path}: got {tmp.stat().st_size} bytes, expected {want['size']}")
        tmp.replace(target)
        manifest[rel] = want
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return local


def resolve(path_or_uri: str | os.PathLike | None, storage_options: dict | None = None) -> Path:
    if path_or_uri is None or str(path_or_uri) in ("", "spote-tiny"):
        return DEFAULT_MODEL
    s = str(path_or_uri)
    if _is_remote(s):
        return fetch_checkpoint(s, storage_options)
    p = Path(s.removeprefix("file://"))
    if not p.exists():
        raise FileNotFoundError(f"model folder not found: {p}")
    return p


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_adapter(path_or_uri=None, *, device: str | None = None, dtype: str | torch.dtype | None = None,
                 relevance: bool = True, trust_remote_code: bool = False, storage_options: dict | None = None,
                 batch_size: int | None = None) -> HFAdapter:
    """Load a frozen VLM and wrap it in the adapter its config's ``model_type`` calls for."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    local = resolve(path_or_uri, storage_options)
    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    cls = adapter_registry().get(config.model_type, HFAdapter)
    wants_attention = relevance and cls.supports_relevance
    kwargs = {"attn_implementation": "eager"} if wants_attention else {}
    model = AutoModelForImageTextToText.from_pretrained(
        local, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    model.to(device).eval()
    processor = AutoProcessor.from_pretrained(local, trust_remote_code=trust_remote_code)
    adapter = cls(model, processor, batch_size=batch_size or (32 if device.startswith("cuda") else 64))
    if not wants_attention:
        adapter.supports_relevance = False
    adapter.name = str(path_or_uri or "spote-tiny")
    return adapter


def weights_checksum(model) -> str:
    """SHA-256 over every parameter and buffer, to prove the model stayed frozen."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()
