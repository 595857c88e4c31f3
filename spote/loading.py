"""Loading a frozen VLM by name, and picking its adapter.

``load_adapter(model)`` resolves ``model`` in this order (the first that applies wins):

1. ``None`` or ``"spote-tiny"``: the shipped model (``spote/weights/spote-tiny``).
2. A URI with a scheme (``s3://bucket/models/x``, ``gs://...``): a remote checkpoint folder, copied once
   into ``SPOTE_CACHE``; every file's size (and ETag where the store gives one) is recorded and re-checked,
   so a changed or truncated copy is fetched again, and a file the store no longer has is removed. The
   same files are taken as from the hub (safetensors, configs, tokenizer, chat template), never pickles.
3. An existing local folder (or ``file://`` path).
4. A Hugging Face hub id (``Qwen/Qwen2.5-VL-3B-Instruct``), at ``revision`` (branch, tag or commit;
   default ``main``), through the standard hub cache (``HF_HOME`` / ``HF_HUB_CACHE``; with
   ``HF_HUB_OFFLINE=1`` only the cache is read). Only safetensors weights, configs, tokenizer and
   chat-template files are fetched, never ``.bin`` pickles (nor ``.py`` unless ``trust_remote_code``).
5. Otherwise ``ModelNotFound``, whose one-line message names every place tried.

``endpoint=URL`` instead runs against an OpenAI-compatible server in black-box mode
(``spote.adapters.endpoint``); ``model`` is then the server's model name.

Weights load as safetensors only, ``trust_remote_code`` stays off unless asked, and the model is put in
eval mode with gradients off: SPOT-E never updates it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .adapters.base import HFAdapter, PromptTooLong
from .adapters.llava import LlavaAdapter
from .uris import is_remote, local_path

DEFAULT_MODEL = Path(__file__).parent / "weights" / "spote-tiny"
# an empty SPOTE_CACHE is unset, as for HF_HOME: Path("") would be the current folder
CACHE_DIR = Path(os.environ.get("SPOTE_CACHE") or Path.home() / ".cache" / "spote" / "models")


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


def _fingerprint(info: dict) -> dict:
    etag = info.get("ETag") or info.get("etag")
    return {"size": int(info.get("size") or 0), "etag": etag.strip('"') if isinstance(etag, str) else None}


def list_checkpoint(uri: str, storage_options: dict | None = None,
                    trust_remote_code: bool = False) -> tuple[object, str, dict[str, dict]]:
    """The files of a remote checkpoint folder that loading it uses -> (fs, folder path, {relative path: info}).

    Kept as for a hub id: ``HUB_ALLOW`` less ``HUB_IGNORE`` (``huggingface_hub.utils.filter_repo_objects``),
    ``*.py`` only with ``trust_remote_code``, of the folder's top level only (not its subfolders: a training
    run's intermediate checkpoints); a trailing ``/`` on ``uri`` names the same folder.

    Raises:
        FileNotFoundError: nothing under ``uri``; no ``config.json``; no safetensors weights.
        NotADirectoryError: ``uri`` names a file, not a folder.
    """
    import fsspec
    from huggingface_hub.utils import filter_repo_objects

    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    root = root.rstrip("/")
    fs.invalidate_cache(root)  # s3fs keeps listings per instance; the store may have changed since
    # the folder's own files only: transformers reads a checkpoint's top level, and a training output folder
    # holds every intermediate checkpoint (checkpoint-100/...) and optimizer state below it
    found = fs.find(root, maxdepth=1, detail=True)
    if not found:
        raise FileNotFoundError(f"no checkpoint files under {uri}")
    if root in found:
        raise NotADirectoryError(f"{uri} is a file; name the checkpoint folder that holds it")
    files = {path[len(root) + 1:]: info for path, info in found.items() if path.startswith(root + "/")}
    allow = HUB_ALLOW + (["*.py"] if trust_remote_code else [])
    kept = {rel: files[rel] for rel in filter_repo_objects(files, allow_patterns=allow, ignore_patterns=HUB_IGNORE)}
    if "config.json" not in kept:
        raise FileNotFoundError(f"no config.json under {uri}: not a saved transformers checkpoint")
    if not any(rel.endswith(".safetensors") and "/" not in rel for rel in kept):  # transformers looks at the top
        raise FileNotFoundError(f"no safetensors weights under {uri} (pickled .bin weights are never loaded)")
    if "model.safetensors.index.json" in kept:
        try:
            index = json.loads(fs.cat_file(f"{root}/model.safetensors.index.json"))
        except ValueError:
            index = None
        check_shards(index, set(kept), f"under {uri}")
    return fs, root, kept


def check_shards(index, held: set[str], where: str) -> None:
    """A sharded checkpoint's ``model.safetensors.index.json`` (parsed; None if it does not parse) names
    only shards among ``held`` (file names in the folder).

    Raises:
        FileNotFoundError: no readable ``weight_map``, or shards the folder does not hold (the first three).
    """
    shards = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(shards, dict):
        raise FileNotFoundError(f"model.safetensors.index.json {where} has no readable weight_map")
    if missing := sorted({str(x) for x in shards.values()} - held):
        raise FileNotFoundError(f"model.safetensors.index.json {where} names shards it does not hold: "
                                f"{', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))


SAFETENSORS_MAX_HEADER = 100_000_000  # bytes; the safetensors library refuses longer headers


def check_safetensors_sizes(fs, root: str, files: dict[str, dict]) -> None:
    """Each ``.safetensors`` file is as long as its header says, read with two small ranged reads.

    The format (github.com/huggingface/safetensors, "Format"): 8 bytes, the header's length N as a
    little-endian u64; N bytes of JSON giving each tensor's ``data_offsets`` [begin, end) into the
    byte buffer that follows. A whole file is 8 + N + the largest ``end`` bytes long.

    Raises:
        OSError: a file that is cut short, padded, or whose header is not a safetensors header.
    """
    for rel, info in files.items():
        if not rel.endswith(".safetensors"):
            continue
        path, size = f"{root}/{rel}", int(info.get("size") or 0)
        try:
            n = int.from_bytes(fs.cat_file(path, start=0, end=8), "little") if size >= 8 else -1
            fits = 0 < n <= min(size - 8, SAFETENSORS_MAX_HEADER)
            header = json.loads(fs.cat_file(path, start=8, end=8 + n)) if fits else None
            ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
            if not all(type(e) is int for e in ends):
                raise TypeError("data_offsets are not integers")
            end = max(ends, default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            header = None
        if header is None:
            raise OSError(f"{rel} is not a safetensors file ({size} bytes, no readable header)")
        if size != 8 + n + end:
            raise OSError(f"{rel} is {size} bytes but its header describes {8 + n + end}: cut short or damaged")


def fetch_checkpoint(uri: str, storage_options: dict | None = None, cache_dir: Path | None = None,
                     trust_remote_code: bool = False) -> Path:
    """A local copy of a remote checkpoint folder, kept equal to the store: files are copied once,
    copied again when their size or ETag changes, and removed when the store no longer has them.
    Only the files ``list_checkpoint`` keeps are copied (never pickled weights).

    Actors on one machine that load the same checkpoint at once share one copy: the first takes a
    file lock beside the cache folder (``<folder>.lock``, ``filelock``, as the hub cache does), lists
    the store and copies; the others wait, list the store as it is then, and find their copy up to
    date. The lock goes with a process that dies. A cache on a read-only file system is used as it
    is when its copy is up to date.

    Returns the local folder. Raises what ``list_checkpoint`` raises, and OSError (a copied file's
    size differs from the store's; a read-only cache whose copy is missing or out of date).
    """
    import fsspec
    from filelock import FileLock

    # keyed by the folder as fsspec names it: s3://m/x, s3://m/x/ and the like share one copy
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    local = Path(cache_dir or CACHE_DIR) / hashlib.sha256(fs.unstrip_protocol(root.rstrip("/")).encode()).hexdigest()[:16]
    try:
        local.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(local.with_name(local.name + ".lock"))
        lock.acquire()
    except OSError as err:  # a read-only cache (a pre-filled one mounted read-only, say)
        fs, root, files = list_checkpoint(uri, storage_options, trust_remote_code)
        if _up_to_date(local, files):
            return local
        raise OSError(f"the model cache {local} cannot be written ({_first_line(err)}) and holds no up-to-date "
                      f"copy of {uri}; point SPOTE_CACHE at a writable folder") from None
    try:
        # listed under the lock: a process that waited compares the store as it is now with what the
        # holder copied, not with a listing taken before the holder's copy
        fs, root, files = list_checkpoint(uri, storage_options, trust_remote_code)
        local.mkdir(exist_ok=True)
        return _mirror(fs, root, files, local)
    finally:
        lock.release()


MANIFEST = ".spote-manifest.json"


def _read_manifest(local: Path) -> dict:
    try:
        return json.loads((local / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _is_current(local: Path, manifest: dict, rel: str, info: dict) -> bool:
    """The copy of ``rel`` was recorded with the store's size and ETag, and still has that size."""
    want, target = _fingerprint(info), local / rel
    return manifest.get(rel) == want and target.is_file() and target.stat().st_size == want["size"]


def _up_to_date(local: Path, files: dict[str, dict]) -> bool:
    """The copy holds exactly the store's files, each of the recorded size and ETag."""
    manifest = _read_manifest(local)
    held = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()} - {MANIFEST}
    return set(manifest) == held == set(files) and all(
        _is_current(local, manifest, rel, info) for rel, info in files.items())


def _mirror(fs, root: str, files: dict[str, dict], local: Path) -> Path:
    manifest_path = local / MANIFEST
    manifest = _read_manifest(local)

    def save_manifest():
        tmp = manifest_path.with_suffix(".part")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(manifest_path)  # a crash mid-write leaves the previous manifest, not half of one

    for rel, info in files.items():
        if _is_current(local, manifest, rel, info):
            continue
        target, want = local / rel, _fingerprint(info)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        fs.get(f"{root}/{rel}", str(tmp))
        got = tmp.stat().st_size
        if got != want["size"]:
            tmp.unlink()
            raise OSError(f"integrity check failed for {rel}: got {got} bytes, expected {want['size']}")
        tmp.replace(target)
        manifest[rel] = want
        save_manifest()
    # what the store no longer has (a re-sharded checkpoint's old single file, a dropped template)
    # must not be loaded beside what it has now
    gone = [p for p in local.rglob("*") if p.is_file() and p.relative_to(local).as_posix() not in files
            and p.name != MANIFEST]
    for p in gone:
        p.unlink()
    for folder in sorted((p for p in local.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if set(manifest) - set(files):
        manifest = {rel: fp for rel, fp in manifest.items() if rel in files}
        save_manifest()
    return local


class ModelNotFound(FileNotFoundError):
    """The model named cannot be found; the message (one line) names every place that was tried."""


class ModelChanged(RuntimeError):
    """A model folder holds other files than when a run started (``checkpoint_fingerprint``)."""


# What a checkpoint needs from a hub repository: weights as safetensors, configs, tokenizer, chat template.
HUB_ALLOW = ["*.safetensors", "*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
# Never pickled weights (or other formats) even where a repository carries them beside safetensors.
HUB_IGNORE = ["*.bin", "*.bin.index.json", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.onnx", "*.gguf"]


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), read now rather than at import."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hub_cache_dir() -> str:
    """The hub cache folder: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else the library default; read now."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    return constants.HF_HUB_CACHE


def is_hub_id(name: str) -> bool:
    """``name`` or ``org/name`` as the hub spells ids (not a path: no leading ``.``, ``/`` or ``~``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def fetch_hub(repo_id: str, revision: str | None = None, trust_remote_code: bool = False,
              config_only: bool = False) -> Path:
    """The local snapshot folder of hub model ``repo_id`` at ``revision``, downloaded if allowed and missing
    (``config_only``: only its ``config.json``, to check that it exists).

    Raises:
        ModelNotFound: not in the cache and not downloadable (offline, unreachable hub, no such repository,
            revision or safetensors weights); the message says which, with the cache path.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    cache, offline = hub_cache_dir(), hub_offline()
    at = f"hub id {repo_id!r} at revision {revision or 'main'!r}"
    where = f"hub cache {cache}" + ("; HF_HUB_OFFLINE=1, so no download" if offline else "")
    allow = ["config.json"] if config_only else HUB_ALLOW + (["*.py"] if trust_remote_code else [])
    short = bool(revision and re.fullmatch(r"[0-9a-f]{7,39}", revision))
    upper = bool(revision and re.fullmatch(r"[0-9a-fA-F]{7,40}", revision) and revision != revision.lower())
    hint = ("; a commit is named by its full 40-character hash" if short
            else f"; commit hashes are lower case ({revision.lower()})" if upper else "")
    try:
        folder = None
        if revision and re.fullmatch(r"[0-9a-f]{40}", revision) and not offline:
            # a commit never changes: a whole snapshot of it in the cache is that commit, and the hub need not
            # be asked (an unreachable one is retried for a while first); a partial one (a download cut short,
            # a config-only check) is completed from the hub
            try:
                local = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True,
                                               allow_patterns=allow, ignore_patterns=HUB_IGNORE))
                if not config_only:
                    check_folder(local, trust_remote_code)
                folder = local
            except (LocalEntryNotFoundError, OSError):
                folder = None
        if folder is None:
            folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=offline,
                                            allow_patterns=allow, ignore_patterns=HUB_IGNORE))
    except RevisionNotFoundError:
        raise ModelNotFound(f"{at}: the hub has no such revision ({where}){hint}") from None
    except GatedRepoError:
        raise ModelNotFound(f"{at}: gated repository; accept its terms on the hub and log in (HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelNotFound(f"{at}: no such repository on the hub, or private without a token ({where})") from None
    except LocalEntryNotFoundError as err:
        reason = "not in the cache" if offline else "not in the cache and the hub is unreachable"
        detail = "" if offline else f"; {_first_line(err.__cause__ or err)}"
        raise ModelNotFound(f"{at}: {reason} ({where}){detail}{hint}") from None
    except (HfHubHTTPError, HFValidationError, OSError) as err:
        raise ModelNotFound(f"{at}: {_first_line(err)} ({where})") from None
    if not config_only and not any(folder.glob("*.safetensors")):
        raise ModelNotFound(f"{at}: no safetensors weights in {folder} (pickled .bin weights are never loaded)")
    return folder


def resolve(path_or_uri: str | os.PathLike | None, storage_options: dict | None = None,
            revision: str | None = None, trust_remote_code: bool = False) -> Path:
    """The local folder of a model named as ``load_adapter`` takes it (resolution order: module
    docstring), its top-level safetensors files checked against their headers.

    Raises:
        ModelNotFound: nothing found (the one-line message names the folder, hub id and cache tried), weights
            cut short or damaged, or a folder ``check_folder`` refuses.
        ValueError: ``revision`` given for something other than a hub id.
    """
    import fsspec

    folder = _find(path_or_uri, storage_options, revision, trust_remote_code)
    try:  # a hub snapshot's link to a missing blob fails here too
        check_folder(folder, trust_remote_code)
        weights = {p.name: {"size": p.stat().st_size} for p in folder.glob("*.safetensors")}
        check_safetensors_sizes(fsspec.filesystem("file"), str(folder), weights)
    except OSError as err:  # safetensors itself would say only "incomplete metadata, file not fully covered"
        raise ModelNotFound(f"model {str(path_or_uri or 'spote-tiny')!r} cannot be loaded: {err}") from None
    return folder


# the JSON files transformers reads from a checkpoint folder (a broken one fails there naming no file)
CHECKPOINT_JSON = ["config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "processor_config.json",
                   "preprocessor_config.json", "video_preprocessor_config.json", "chat_template.json"]
# a tokenizer is one of these (fast tokenizer, sentencepiece, BPE/WordPiece vocabulary, tiktoken)
TOKENIZER_FILES = ["tokenizer.json", "*.model", "vocab.json", "vocab.txt", "*.tiktoken"]


# where an image processor's settings are saved (transformers: its own file, or inside the processor's)
IMAGE_PROCESSOR_FILES = ["preprocessor_config.json", "processor_config.json"]


def check_config(config: dict, where: str, trust_remote_code: bool = False) -> None:
    """A checkpoint's parsed ``config.json`` names a ``model_type`` transformers loads as an image-text
    model (``AutoModelForImageTextToText``): not an unknown type, nor a text-only one (``llama``, ``bert``),
    whose folder would load nowhere or fail at every question. ``where``: "in FOLDER" for the message.

    Raises:
        OSError: in one line, naming the type and ``where``.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    model_type = config.get("model_type")
    if trust_remote_code and "auto_map" in config:
        return
    if model_type not in CONFIG_MAPPING_NAMES:
        known = "" if model_type is None else f" ({model_type!r})"
        raise OSError(f"config.json {where} names no model_type this transformers knows{known}"
                      + ("; its auto_map names the checkpoint's own code, which runs only when asked "
                         "(--trust-remote-code, trust_remote_code=True)" if "auto_map" in config else ""))
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise OSError(f"config.json {where} names model_type {model_type!r}, which transformers does not load as "
                      "an image-text model (AutoModelForImageTextToText): SPOT-E needs a vision-language model")


def check_folder(folder: Path, trust_remote_code: bool = False) -> None:
    """What can be known of a local checkpoint folder from its files, without loading the weights:
    its JSON files parse, ``config.json``'s ``model_type`` is an image-text one (``check_config``),
    safetensors weights are there (and every shard their index names), and so are an image processor,
    a tokenizer and a chat template (in any
    place transformers looks: ``chat_template.jinja``, ``chat_template.json``, or a ``chat_template``
    field of ``processor_config.json``: where the processor reads it, not the tokenizer's config).

    Whether the weights hold every tensor the model needs is checked when they load (``load_adapter``):
    checkpoints name tensors as their transformers version did, and only loading maps old names to new.

    Raises:
        OSError: the first problem found, in one line naming the file.
    """
    parsed = {}

    def parse(name: str) -> None:
        if (folder / name).is_file():
            try:
                parsed[name] = json.loads((folder / name).read_bytes())
            except (ValueError, UnicodeDecodeError) as err:
                raise OSError(f"{name} in {folder} is not valid JSON ({err})") from None

    for name in CHECKPOINT_JSON:  # a hub snapshot's link to a blob that is gone reads as a missing file
        if (folder / name).is_symlink() and not (folder / name).exists():
            raise OSError(f"{name} in {folder} is a link to a file that is gone ({os.readlink(folder / name)})")
    if not (folder / "config.json").is_file():
        raise OSError(f"no config.json in {folder}: not a saved transformers checkpoint")
    parse("config.json")
    config = parsed.get("config.json")
    if not isinstance(config, dict):
        raise OSError(f"config.json in {folder} is not a JSON object")
    check_config(config, f"in {folder}", trust_remote_code)
    # before the other files: .bin weights beside a stray (or empty) index are "no safetensors", as on the hub
    if not any(folder.glob("*.safetensors")):
        raise OSError(f"no safetensors weights in {folder} (pickled .bin weights are never loaded)")
    for name in CHECKPOINT_JSON:
        parse(name)
    if "model.safetensors.index.json" in parsed:
        check_shards(parsed["model.safetensors.index.json"], {p.name for p in folder.iterdir() if p.is_file()},
                     f"in {folder}")
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        raise OSError(f"no image processor in {folder} (none of {', '.join(IMAGE_PROCESSOR_FILES)}): a checkpoint "
                      "saved without its processor (processor.save_pretrained)")
    if not any(any(folder.glob(pattern)) for pattern in TOKENIZER_FILES):
        raise OSError(f"no tokenizer in {folder} (none of {', '.join(TOKENIZER_FILES)})")
    # where the processor reads its template from (transformers' ProcessorMixin: not the tokenizer's config)
    fields = [parsed.get(n) for n in ("chat_template.json", "processor_config.json")]
    jinja = folder / "chat_template.jinja"
    if not (jinja.is_file() and jinja.read_text(errors="replace").strip()
            or any(isinstance(f, dict) and f.get("chat_template") for f in fields)):
        raise OSError(f"no chat template in {folder} (chat_template.jinja, chat_template.json, or a chat_template "
                      f"field of processor_config.json)")


def _find(path_or_uri, storage_options, revision, trust_remote_code) -> Path:
    if revision is not None and not str(revision).strip():  # "" read the hub cache's refs/ folder as a ref
        raise ValueError("--revision is empty: give a branch, tag or commit, or leave it out for main")
    if path_or_uri is not None and not str(path_or_uri).strip():  # "" took the shipped model without a word
        raise ValueError("the model is an empty name: leave it out (--model, model=) for the shipped spote-tiny, "
                         "or give a folder, URI or hub id")
    if path_or_uri is None or str(path_or_uri) == "spote-tiny":
        if revision:
            raise ValueError("a revision (--revision, revision=) applies to hub ids only, not to the shipped spote-tiny")
        return DEFAULT_MODEL
    s = str(path_or_uri)
    if is_remote(s):
        if revision:
            raise ValueError(f"a revision (--revision, revision=) applies to hub ids only, not to {s}")
        try:
            return fetch_checkpoint(s, storage_options, trust_remote_code=trust_remote_code)
        except Exception as err:  # missing, no credentials, unreachable store: all mean "cannot load this model"
            raise ModelNotFound(f"model {s!r} could not be fetched: {_first_line(err)}") from None
    p = Path(local_path(s)).expanduser()
    if p.is_dir():
        if revision:
            raise ValueError(f"a revision (--revision, revision=) applies to hub ids only, not to the local folder {p}")
        if not (p / "config.json").is_file():  # transformers would say only that it found no model_type
            gone = (p / "config.json").is_symlink()
            shadows = is_hub_id(s) and not Path(s).is_absolute()  # the folder is read first, as documented
            raise ModelNotFound(f"model folder {p} has no config.json" + (
                f" (a link to a file that is gone, {os.readlink(p / 'config.json')})" if gone
                else ": not a saved transformers checkpoint") + (
                f"; the folder {s} here is read before the hub id {s!r}: run elsewhere to load the hub id"
                if shadows else ""))
        return p
    tried = f"no folder {p.absolute()}" + (" (a file, not a folder)" if p.exists() else "")
    if s.startswith("file:") or not is_hub_id(s):
        raise ModelNotFound(f"model {s!r} not found: {tried}; not a hub id (ORG/NAME) either")
    try:
        return fetch_hub(s, revision, trust_remote_code)
    except ModelNotFound as err:
        raise ModelNotFound(f"model {s!r} not found: {tried}; {err}") from None


def text_rules(path_or_uri=None, revision: str | None = None, trust_remote_code: bool = False):
    """The model's ``TextRules`` (what it reads as text) from its processor alone, where that costs no
    download: the shipped model, a local folder, or a hub id's cached snapshot with ``HF_HUB_OFFLINE=1``.
    None elsewhere (an ``s3://`` checkpoint, a hub id that may be fetched), and where the processor does not
    load here: the actors then check every question as they answer it, and load what they load.
    """
    from transformers import AutoProcessor

    from .adapters.base import TextRules

    s = "" if path_or_uri is None else str(path_or_uri)
    if is_remote(s) or (is_hub_id(s) and not Path(local_path(s)).expanduser().is_dir() and not hub_offline()):
        return None
    try:
        folder = resolve(path_or_uri, None, revision, trust_remote_code)
        return TextRules(AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code))
    except Exception:  # noqa: BLE001  not the check's to judge: the start-up check and the actors say why
        return None


def check_model(path_or_uri, storage_options: dict | None = None, revision: str | None = None,
                trust_remote_code: bool = False) -> str | None:
    """Fail fast where a job starts: the model can be found, checked without fetching its weights
    (a remote folder is listed and its safetensors headers read, a hub id's ``config.json`` alone is
    fetched into the cache). ``trust_remote_code``: a config whose ``auto_map`` names the checkpoint's own
    code is accepted (``load_adapter``'s).

    Returns:
        For a hub id, the commit (40 hex digits) its revision names now: a branch or tag moves, so a job
        loads and records this commit, never the name. None for every other model.

    Raises:
        ModelNotFound, ValueError: as ``resolve``.
    """
    s = "" if path_or_uri is None else str(path_or_uri)
    if is_remote(s) and not revision:
        try:
            fs, root, files = list_checkpoint(s, storage_options)
            check_safetensors_sizes(fs, root, files)
            try:
                config = json.loads(fs.cat_file(f"{root}/config.json"))
            except ValueError:
                raise OSError(f"config.json under {s} is not valid JSON") from None
            if not isinstance(config, dict):
                raise OSError(f"config.json under {s} is not a JSON object")
            check_config(config, f"under {s}", trust_remote_code)
            if not any(name in files for name in IMAGE_PROCESSOR_FILES):
                raise OSError(f"no image processor under {s} (none of {', '.join(IMAGE_PROCESSOR_FILES)})")
        except Exception as err:  # missing bucket, no credentials, unreachable store, not a checkpoint
            said = str(err) if type(err) is OSError else _first_line(err)  # our own words need no class name
            raise ModelNotFound(f"model {s!r} cannot be loaded: {said}") from None
        return None
    local = Path(local_path(s)).expanduser()
    if is_remote(s) or s in ("", "spote-tiny") or local.is_dir() or s.startswith("file:") or not is_hub_id(s):
        resolve(path_or_uri, storage_options, revision, trust_remote_code)  # no download on these paths
        return None
    try:
        folder = fetch_hub(s, revision, trust_remote_code, config_only=True)
    except ModelNotFound as err:
        raise ModelNotFound(f"model {s!r} not found: no folder {local.absolute()}; {err}") from None
    if hub_offline():  # no download can complete the snapshot: it is what every actor will load, checked whole
        try:
            check_folder(folder, trust_remote_code)
        except OSError as err:
            raise ModelNotFound(f"model {s!r} cannot be loaded from its cached snapshot (HF_HUB_OFFLINE=1, so no "
                                f"download): {err}") from None
    else:  # only the config is here yet: what it says is known now
        try:
            config = json.loads((folder / "config.json").read_bytes())
            check_config(config if isinstance(config, dict) else {}, f"of hub id {s!r} ({folder})", trust_remote_code)
        except (OSError, ValueError) as err:
            raise ModelNotFound(f"model {s!r} cannot be loaded: {_first_line(err).removeprefix('OSError: ')}") from None
    # huggingface_hub keeps a revision's files in snapshots/<commit>/
    return folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None


SMALL_FILE = 1 << 20       # bytes: configs, tokenizer and template files up to this size are hashed whole
TENSOR_SAMPLE_BYTES = 256  # bytes read from the middle of each tensor of a larger safetensors file


def checkpoint_fingerprint(path_or_uri, storage_options: dict | None = None) -> str | None:
    """What a checkpoint folder holds now, cheaply enough to check at every job start and actor load: a
    hub commit names its content, a folder (local, remote, the shipped spote-tiny) has no such name, and
    weights saved over it between a run's crash and its resume would mix two models' answers in one run.

    SHA-256 over the files loading reads (``list_checkpoint``), each by its name and size, and: files of
    up to ``SMALL_FILE`` bytes whole; larger ones by the store's ETag where it gives one (S3: a hash of the
    content), else, for safetensors, their header (every tensor's name, dtype, shape and offsets) and
    ``TENSOR_SAMPLE_BYTES`` from the middle of every tensor. Sampled, not a full hash (that would read
    every byte of a many-GB model at each start): weights retrained or fine-tuned over the folder, even a
    single tensor of them (a projector trained alone), change the bytes sampled; an edit of a few values
    outside a tensor's middle may go unseen. A copy on S3 is known by its ETags, a local one by its bytes,
    so the two have different fingerprints.

    Returns:
        ``"sha256:"`` and 64 hex digits; None for a hub id (its commit is the name, see ``check_model``).

    Raises:
        ModelNotFound: the folder cannot be listed or read (as ``check_model``).
    """
    s = "" if path_or_uri is None else str(path_or_uri)
    if s in ("", "spote-tiny"):
        s = str(DEFAULT_MODEL)
    elif not is_remote(s):
        local = Path(local_path(s)).expanduser()
        if not local.is_dir():
            return None  # a hub id
        s = str(local.absolute())
    h = hashlib.sha256()
    try:
        fs, root, files = list_checkpoint(s, storage_options)
        for rel in sorted(files):
            info = files[rel]
            size = int(info.get("size") or 0)
            etag = _fingerprint(info)["etag"]
            h.update(json.dumps([rel, size, etag if size > SMALL_FILE else None]).encode())
            path = f"{root}/{rel}"
            if size <= SMALL_FILE:
                h.update(fs.cat_file(path))
            elif etag is None and rel.endswith(".safetensors"):
                with fs.open(path, "rb") as f:  # the format: check_safetensors_sizes
                    n = int.from_bytes(f.read(8), "little")
                    header = f.read(n)
                    h.update(header)
                    spans = sorted(tuple(t["data_offsets"]) for k, t in json.loads(header).items()
                                   if k != "__metadata__")
                    for begin, end in spans:
                        take = min(TENSOR_SAMPLE_BYTES, end - begin)
                        f.seek(8 + n + (begin + end - take) // 2)
                        h.update(f.read(take))
    except Exception as err:  # gone, no credentials, unreachable store
        raise ModelNotFound(f"model {s!r} cannot be read: {_first_line(err)}") from None
    return f"sha256:{h.hexdigest()}"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# the spellings of torch's float dtypes taken for ``dtype`` (also with a ``torch.`` prefix)
DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
          "float64": torch.float64, "double": torch.float64, "fp64": torch.float64}
DEVICES = ("cpu", "cuda", "cuda:N", "mps")


def check_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """``dtype`` as ``from_pretrained`` takes it: a torch float dtype, ``"auto"`` (the checkpoint's own),
    or None (the default for the device).

    Raises:
        ValueError: anything else (``"float31"``, ``torch.int8``), naming the accepted values.
    """
    if dtype is None or isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.")
        if name == "auto":
            return "auto"
        if name in DTYPES:
            return DTYPES[name]
    raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)} or auto")


def check_device(device: str | None) -> str:
    """``device``, or the default one, once torch can put a model there.

    Raises:
        ValueError: a name torch does not know or SPOT-E does not run on (``"gpu"``), or a CUDA/MPS device
            this torch does not see.
    """
    device = str(device or default_device())
    try:
        kind = torch.device(device).type
    except RuntimeError:  # torch's own message lists two dozen backends
        kind = None
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch sees no CUDA device (a CPU build, or no GPU); use cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: this torch sees no MPS device; use cpu")
    return device


class _HoldLoadReport:
    """Holds back what transformers warns of while weights load (its multi-line LOAD REPORT, "checkpoint
    seem corrupted"): a checkpoint that does not cover the model is refused in one line instead; the
    warnings of a checkpoint that is not refused (unexpected keys alone, say) are logged after all."""

    def __enter__(self):
        self.logger, self.held = logging.getLogger("transformers.modeling_utils"), []
        self.logger.addFilter(self)
        return self

    def filter(self, record) -> bool:
        if record.levelno >= logging.WARNING:
            self.held.append(record)
            return False
        return True

    def __exit__(self, *exc):
        self.logger.removeFilter(self)

    def release(self) -> None:
        for record in self.held:
            self.logger.handle(record)


def check_loading_info(info: dict, name: str, folder: Path) -> None:
    """Every tensor the model needs came from the checkpoint, in its shape: SPOT-E reads a frozen, trained
    model, and transformers fills what a checkpoint lacks with random values, warning only. ``info`` is
    ``from_pretrained(..., output_loading_info=True)``'s, whose ``missing_keys`` already leave out tied
    weights and the keys the model class declares ignorable.

    Raises:
        ModelNotFound: one line naming the first few missing or misshapen tensors.
    """
    def some(keys) -> str:
        keys = sorted(keys)
        return ", ".join(keys[:3]) + (" ..." if len(keys) > 3 else "")

    where = f"model {name!r} cannot be loaded: the weights in {folder}"
    if missing := info.get("missing_keys"):
        raise ModelNotFound(f"{where} miss {len(missing)} tensor{'s' * (len(missing) > 1)} the model needs: "
                            f"{some(missing)}")
    if mismatched := info.get("mismatched_keys"):
        key, got, want = sorted(mismatched, key=lambda m: m[0])[0]
        raise ModelNotFound(f"{where} hold {len(mismatched)} tensor{'s' * (len(mismatched) > 1)} of the wrong "
                            f"shape: {key} is {list(got)}, the model needs {list(want)}"
                            + (f" (and {some(k for k, _, _ in mismatched)})" if len(mismatched) > 1 else ""))


def load_adapter(path_or_uri=None, *, revision: str | None = None, endpoint: str | None = None,
                 endpoint_options: dict | None = None, device: str | None = None,
                 dtype: str | torch.dtype | None = None, relevance: bool = True, trust_remote_code: bool = False,
                 storage_options: dict | None = None, batch_size: int | None = None) -> HFAdapter:
    """Load a frozen VLM and wrap it in the adapter its config's ``model_type`` calls for.

    Args:
        path_or_uri: None (the shipped spote-tiny), an ``s3://``-style checkpoint URI, a local folder or a hub
            id; with ``endpoint``, the model name the server knows.
        revision: branch, tag or commit of a hub id (default ``main``).
        endpoint: base URL of an OpenAI-compatible server (``http://host:8000/v1``): black-box mode through
            ``EndpointAdapter``; ``endpoint_options`` are ``EndpointConfig`` fields (``api_key_env``,
            ``concurrency``, ``timeout_s``, ``max_retries``, ``max_images``, ``view_size``, ...).

        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (default: cuda when torch sees one).
        dtype: a torch float dtype or its name (``bfloat16``, ``bf16``, ``torch.float16``, ``fp32``, ...) or
            ``auto`` (the checkpoint's own); default bfloat16 on CUDA, else float32.

    Raises:
        ModelNotFound: the model cannot be found (one-line message naming what was tried), or cannot be loaded
            as found: files ``check_folder`` refuses, weights cut short, weights that miss tensors the model
            needs or hold them in the wrong shape, a processor without a chat template, files that load but
            fail one pass on a blank image or give it scores that are not finite (``probe``).
        ValueError: an empty model name, ``endpoint_options`` that are not a dict or name fields that do not
            exist, ``revision`` for something other than a hub id, a ``dtype`` or ``device`` that is not one
            of those above, a CUDA/MPS ``device`` torch does not see, a ``batch_size`` that is not a whole
            number >= 1.
        TypeError: ``trust_remote_code`` that is not a bool (``"false"`` would read as true).
    """
    if not isinstance(trust_remote_code, bool):  # "false" is a true value: the checkpoint's code would run
        raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    if endpoint_options is not None and not isinstance(endpoint_options, Mapping):
        raise ValueError(f"endpoint_options must be a dict of EndpointConfig fields, e.g. {{'timeout_s': 30}}, got "
                         f"{type(endpoint_options).__name__}")
    if endpoint:
        from .adapters.endpoint import open_endpoint

        if revision:
            raise ValueError("a revision (--revision, revision=) applies to hub ids; an endpoint serves whatever it serves")
        if trust_remote_code:
            raise ValueError("trust_remote_code (--trust-remote-code) applies to a model loaded here; an endpoint's "
                             "server runs its own code")
        return open_endpoint(endpoint, path_or_uri, **(endpoint_options or {}))
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    # before anything is fetched or loaded: a bad flag is the user's, and cheap to say
    device, dtype = check_device(device), check_dtype(dtype)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a whole number of view sets >= 1 (or None), got {batch_size!r}")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    name = str(path_or_uri or "spote-tiny")
    local = resolve(path_or_uri, storage_options, revision, trust_remote_code)
    config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    cls = adapter_registry().get(config.model_type, HFAdapter)
    wants_attention = relevance and cls.supports_relevance
    kwargs = {"attn_implementation": "eager"} if wants_attention else {}
    with _HoldLoadReport() as report:
        # a misshapen tensor is reported in loading_info (and refused below) rather than raised after the report
        model, info = AutoModelForImageTextToText.from_pretrained(
            local, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True,
            ignore_mismatched_sizes=True, **kwargs)
    check_loading_info(info, name, local)
    report.release()
    model.to(device).eval()
    try:
        processor = AutoProcessor.from_pretrained(local, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:  # transformers' words point at the hub website
        raise ModelNotFound(f"model {name!r} cannot be loaded: its processor does not load ({local}): "
                            f"{_first_line(err)}") from None
    adapter = cls(model, processor, batch_size=batch_size or (32 if device.startswith("cuda") else 64))
    if not getattr(processor, "chat_template", None):  # else apply_chat_template fails at the first question
        raise ModelNotFound(f"model {name!r} cannot be loaded: its processor has no chat template ({local})")
    if not wants_attention:
        adapter.supports_relevance = False
    adapter.name = name + (f"@{revision}" if revision else "")
    probe(adapter, name, local)
    return adapter


def probe(adapter: HFAdapter, name: str, folder) -> None:
    """One pass of the loaded model on a blank image, so that files that load but disagree (a chat template
    that does not render or lacks the image placeholder, an ``image_token_index`` or ``patch_size`` that
    does not match the model, a processor size the vision tower was not built for) are refused at load,
    naming the model, rather than failing every question with transformers' words. Not counted in
    ``forward_passes``.

    Raises:
        ModelNotFound: one line naming the model, its folder and what failed; scores of that pass that are
            NaN or +infinity (broken weights) included.
    """
    from PIL import Image

    where = f"model {name!r} cannot be loaded ({folder})"
    try:
        prompt = adapter.prompt_text(1, "what is this ?")
    except Exception as err:  # jinja2's TemplateError, or a template that raises on a plain message
        raise ModelNotFound(f"{where}: its chat template does not render: {_first_line(err)}") from None
    side = adapter.input_size or 64
    try:
        before = adapter.forward_passes
        with torch.inference_mode():
            out = adapter._forward(adapter.encode([[Image.new("RGB", (side, side), (255, 255, 255))]], [prompt]),
                                   last=1)
        adapter.forward_passes = before
    except PromptTooLong:  # a model that reads little: its questions will say so, each in its own words
        return
    except torch.OutOfMemoryError:  # the batch halving handles memory: not a wrong file
        return
    except Exception as err:
        raise ModelNotFound(f"{where}: one pass on a blank image fails, so its config.json, processor files and "
                            f"chat template disagree: {_first_line(err)}") from None
    logits = getattr(out, "logits", None)
    # NaN or +inf (a -inf logit is a token the model never gives, which a sound model may have)
    if isinstance(logits, torch.Tensor) and (torch.isnan(logits).any() or torch.isposinf(logits).any()):
        raise ModelNotFound(f"{where}: its scores on a blank image are not finite (NaN or infinity): its weights "
                            f"(or the dtype {str(logits.dtype).removeprefix('torch.')} they run in) are broken")


def weights_checksum(model) -> str:
    """SHA-256 over every parameter and buffer, to prove the model stayed frozen."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16
                 else t.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()
