"""``spote`` command line: ask one question of one image, or run SpotBench."""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

import typer

from .images import DEFAULT_MAX_PIXELS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="SPOT-E: test-time visual spotlights for frozen VLMs.")

MODEL_HELP = ("model folder, s3:// checkpoint or Hugging Face hub id ORG/NAME (default: the shipped spote-tiny); "
              "with --endpoint, the model name the server serves")
ENDPOINT_HELP = "base URL of an OpenAI-compatible server with logprobs (e.g. http://127.0.0.1:8000/v1): black-box mode"
ENDPOINT_OPTIONS_HELP = ('more EndpointConfig fields as JSON, e.g. \'{"max_images": 1, "view_size": 448, '
                         '"timeout_s": 30, "max_retries": 4}\'')


# the model and endpoint flags `ask` and `bench` share
MODEL_OPTION = typer.Option(None, "--model", help=MODEL_HELP)
REVISION_OPTION = typer.Option(None, "--revision", help="hub id only: branch, tag or commit (default: main)")
ENDPOINT_OPTION = typer.Option(None, "--endpoint", help=ENDPOINT_HELP)
TRUST_REMOTE_CODE_OPTION = typer.Option(False, "--trust-remote-code",
                                        help="run the Python code a checkpoint ships (its config's auto_map); only "
                                             "for a model whose code you have read and trust")
# None when left out, so that api_key_env / concurrency in --endpoint-options are not overridden by a default
API_KEY_ENV_OPTION = typer.Option(None, "--api-key-env", show_default=False,
                                  help="environment variable holding the endpoint's API key "
                                       "(default: OPENAI_API_KEY, or api_key_env in --endpoint-options)")
ENDPOINT_CONCURRENCY_OPTION = typer.Option(None, "--endpoint-concurrency", show_default=False,
                                           help="endpoint requests in flight at most (default: 8, or concurrency "
                                                "in --endpoint-options)")
ENDPOINT_OPTIONS_OPTION = typer.Option("{}", "--endpoint-options", help=ENDPOINT_OPTIONS_HELP)


class AskError(Exception):
    """A malformed ``spote ask`` input; printed as one line ``error: ...``, exit code 2."""


def _fail(message: str, code: int = 2):
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_endpoint_flags(endpoint: str | None, options: dict) -> None:
    """Raise AskError for endpoint flags without ``--endpoint`` (they would be ignored), and for an
    ``--api-key-env`` naming a variable that is not set (every request would go without a key)."""
    if options and not endpoint:
        raise AskError(f"--endpoint-options, --api-key-env and --endpoint-concurrency apply to --endpoint, which "
                       f"is not given (they set {sorted(options)})")
    name = options.get("api_key_env")
    if endpoint and name and name != "OPENAI_API_KEY" and not os.environ.get(name):
        # the value is not repeated: a key pasted where the variable's name goes would reach the terminal's log
        raise AskError("--api-key-env names an environment variable that is not set (or is empty); it takes the "
                       "variable's name (e.g. MY_SERVER_KEY), never the key itself")


def unique_keys(pairs: list[tuple]) -> dict:
    """``json.loads``' ``object_pairs_hook`` for a flag's JSON: a key given twice is refused (ValueError), not
    the last one taken without a word (``{"budget": 2, "budget": 96}`` ran with 96)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"{key!r} is given twice")
        seen[key] = value
    return seen


def parse_policy(text: str | None) -> dict:
    """``--policy`` JSON: an object of PolicyConfig fields. Raises AskError naming the problem."""
    from dataclasses import fields

    from .core import PolicyConfig

    if not text:
        return {}
    try:
        overrides = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as err:
        raise AskError(f"--policy is not valid JSON ({err}): {text!r}") from err
    except ValueError as err:
        raise AskError(f"--policy: {err}") from None
    if not isinstance(overrides, dict):
        raise AskError(f"--policy must be a JSON object of PolicyConfig fields, e.g. '{{\"budget\": 32}}'; got {text!r}")
    known = {f.name for f in fields(PolicyConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise AskError(f"--policy: unknown fields {unknown}; known: {sorted(known)}")
    try:
        PolicyConfig(**overrides)  # a value of the wrong type or range, named with its field
    except ValueError as err:
        raise AskError(f"--policy: {err}") from err
    return overrides


def policy_with_flags(overrides: dict, **flags) -> dict:
    """``--policy``'s fields with the flags that set the same fields (``mode=--mode``, ...) the user gave;
    a flag left out (None) leaves the policy's value. Raises AskError when a flag and ``--policy`` set one
    field to two values."""
    merged = dict(overrides)
    for name, value in flags.items():
        if value is None:
            continue
        if name in overrides and overrides[name] != value:
            raise AskError(f"--policy sets {name} to {overrides[name]!r} and a flag sets it to {value!r}; give one")
        merged[name] = value
    return merged


def check_output_file(path: Path, flag: str, types: Iterable[str] | None = None) -> None:
    """Refuse, before any model loads, an output ``path`` that cannot be written: a folder, a name whose
    extension is not one of ``types`` (when given), a parent that is a file or cannot be made, or a file that
    cannot be created there. Leaves nothing behind: the folders made to try it and the file are removed (a
    refused run leaves no trace, and the writer makes them again). Raises AskError naming ``flag``."""
    try:
        folder = path.is_dir()
    except OSError as err:  # a name longer than the file system allows
        raise AskError(f"{flag} {path}: {err.strerror or err}") from None
    if folder:
        raise AskError(f"{flag} {path} is a directory; give a file name")
    if types is not None and path.suffix[1:].lower() not in types:
        known = ", ".join(sorted(types))
        raise AskError(f"{flag} {path}: no file type in the name; end it with one of: {known}" if not path.suffix
                       else f"{flag} {path}: cannot write a {path.suffix!r} file; end the name with one of: {known}")
    missing, folder = [], path.parent
    try:
        while not folder.exists():  # a dangling link counts as missing: its mkdir below says so
            missing.append(folder)
            folder = folder.parent
    except OSError as err:  # a folder on the way that may not be searched
        raise AskError(f"{flag} {path}: cannot reach {folder}: {_why_not(err, folder.parent)}") from None
    if not folder.is_dir():  # mkdir would say "File exists" or "Not a directory"
        raise AskError(f"{flag} {path}: {folder} is a file, not a folder")
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # "sub/.." once "sub" is made: the name was missing only on the way there
                if folder.is_dir():
                    continue
                raise AskError(f"{flag} {path}: {folder} is a file, not a folder") from None
            except OSError as err:
                raise AskError(f"{flag} {path}: cannot make its folder {folder}: {_why_not(err, folder.parent)}") from None
            made.append(folder)
        _try_file(path, flag)
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:  # something else wrote into it meanwhile: it stays
                break


def _try_file(path: Path, flag: str) -> None:
    """Make the file (and remove it): permission bits alone pass a root user, or a /proc or read-only mount
    that refuses any new file. An existing file is opened to append, which leaves it as it was."""
    if path.exists() and not path.is_file():  # a FIFO would block the open below, a device take the bytes
        raise AskError(f"{flag} {path}: not a regular file")
    existed = path.exists()  # follows a link: a dangling link's target is made here, then removed, the link kept
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        if path.is_symlink() and not existed and err.errno == errno.ENOENT:
            raise AskError(f"{flag} {path}: it links to {os.readlink(path)}, in a folder that does not exist") from None
        why = "no permission to write it" if existed and err.errno in (errno.EACCES, errno.EPERM) else _why_not(err, path.parent)
        raise AskError(f"{flag} {path}: cannot write it: {why}") from None
    if not existed:
        Path(os.path.realpath(path)).unlink(missing_ok=True)


def _why_not(err: OSError, folder: Path) -> str:
    """Why nothing could be made in ``folder``, an existing folder, in words rather than errno's."""
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}"
    if err.errno == errno.EROFS:
        return f"{folder} is on a read-only file system"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left in {folder}"
    if err.errno == errno.ENOENT:  # the folder is there, yet refuses a new name: /proc, /sys
        return f"{folder} takes no new files or folders (a virtual file system)"
    return err.strerror or str(err)


def _image_input(image: Path) -> Path | bytes:
    """``image`` to read: the path of a regular file, or the bytes of a pipe (``<(cmd)``, ``/dev/stdin``),
    which can be read only once. Raises AskError for a missing, empty or unreadable file or a folder."""
    try:
        exists, folder, whole = image.exists(), image.is_dir(), not image.is_file()
    except OSError as err:  # a name longer than the file system allows
        raise AskError(f"cannot read {image}: {err.strerror or err}") from None
    if not exists:
        raise AskError(f"no such file: {image}")
    if folder:
        raise AskError(f"{image} is a directory; give an image file")
    try:
        with open(image, "rb") as f:
            first = _read_stream(f, str(image)) if whole else f.read(1)
    except OSError as err:
        raise AskError(f"cannot read {image}: {err.strerror or err}") from err
    if not first:
        raise AskError(f"empty file (0 bytes): {image}")
    return first if whole else image


def _read_stream(f, name: str) -> bytes:
    """All of a pipe or device ``f``, at most ``images.MAX_STREAM_BYTES``. Raises AskError past it."""
    from . import images

    data = images.read_at_most(f)
    if len(data) > images.MAX_STREAM_BYTES:
        raise AskError(f"{name}: more than {images.MAX_STREAM_BYTES:,} bytes without an end; not an image spote ask reads "
                       "(save a large image to a file)")
    return data


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


@app.command()
def ask(
    image: str = typer.Argument(..., help="image file (any size; PNG, JPEG, TIFF, ...), - for standard input, or "
                                          "an fsspec URI (s3://bucket/key.png, https://...; credentials from the "
                                          "environment)"),
    question: str = typer.Argument(..., help="the question"),
    choices: Optional[str] = typer.Option(None, help="comma-separated answer set, e.g. yes,no; without it the "
                                                     "question is open-ended and the model writes the answer"),
    model: Optional[str] = MODEL_OPTION,
    revision: Optional[str] = REVISION_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    endpoint: Optional[str] = ENDPOINT_OPTION,
    api_key_env: Optional[str] = API_KEY_ENV_OPTION,
    endpoint_concurrency: Optional[int] = ENDPOINT_CONCURRENCY_OPTION,
    endpoint_opts: str = ENDPOINT_OPTIONS_OPTION,
    mode: Optional[str] = typer.Option(None, help="highlight | zoom | zoom+context (default: the policy's, zoom+context)"),
    method: str = typer.Option("spote", help="spote or a peer: baseline, api, vicrop, grid, naive_entropy, random, zoomeye, scaffold"),
    budget: Optional[int] = typer.Option(None, help="forward passes at most, for every search method (default: each "
                                         "method's own: PolicyConfig.budget for spote; api and vicrop cost 2-3); the "
                                         "whole image is always read, at one pass per choice where choices span "
                                         "several tokens"),
    policy: Optional[str] = typer.Option(None, help='PolicyConfig overrides as JSON, e.g. \'{"min_window": 1.5}\''),
    seed: Optional[int] = typer.Option(None, help="the search's random seed (default: the policy's, 0)"),
    black_box: Optional[bool] = typer.Option(None, help="ignore attention (as with a model that gives none): the "
                                                       "policy starts from image saliency alone (use_relevance false "
                                                       "in --policy says the same)"),
    trace_name: Optional[str] = typer.Option(None, "--trace", help="write a PNG (a local file): the spotlights, what "
                                             "the model saw, entropy per step"),
    as_json: bool = typer.Option(False, "--json", help="print the result record as JSON only"),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
                                   help="refuse a larger image before decoding it (decompression-bomb guard)"),
):
    """Answer QUESTION about IMAGE with a per-instance spotlight.

    A malformed input (unreadable image, bad choices, bad --policy, missing model) prints one line
    ``error: ...`` and exits with code 2; an endpoint that fails after its retries, with code 1.
    """
    from .adapters.endpoint import EndpointError, endpoint_options
    from .baselines import ANSWER_METHODS, held_to_budget, run_method
    from .core import PolicyConfig
    from .images import BadImage, ImageTooLarge, check_choices, check_question, load_image
    from .loading import ModelNotFound, load_adapter
    from .uris import is_remote, local_path, redact_uri

    trace = None
    try:
        if trace_name is not None and not trace_name.strip():  # Path("") is ".": "--trace . is a directory"
            raise AskError("--trace is empty; give the name of a picture to write, e.g. --trace trace.png")
        if trace_name is not None and is_remote(trace_name):  # a Path would fold "s3://b/k" into a folder "s3:"
            raise AskError(f"--trace {trace_name}: the trace is written to a local file; give a local path")
        trace = Path(local_path(trace_name)) if trace_name is not None else None
        q = check_question(question)
        ch = check_choices(choices)
        if method not in ANSWER_METHODS:
            raise AskError(f"unknown method {method!r}; expected one of {list(ANSWER_METHODS)}")
        overrides = policy_with_flags(parse_policy(policy), mode=mode, seed=seed, budget=budget,
                                      use_relevance=None if black_box is None else not black_box)
        try:
            cfg = PolicyConfig(**overrides)
        except ValueError as err:  # --policy is valid alone: an option (--mode, --budget) is out of range
            raise AskError(str(err)) from err
        ep_options = endpoint_options(api_key_env, endpoint_concurrency, endpoint_opts)
        check_endpoint_flags(endpoint, ep_options)
        if endpoint:  # bad endpoint flags (URL, option types) in one line, before any request
            from .adapters.endpoint import endpoint_config

            endpoint_config(endpoint, model, **ep_options)
        if trace is not None:  # before the search: a trace that cannot be written would lose its answer
            from matplotlib.figure import Figure

            if _same_file(trace, Path(image)):
                raise AskError(f"--trace {trace} is the input image, which it would overwrite; give another name")

            # savefig picks its writer by the name's extension and has none for, say, .txt
            check_output_file(trace, "--trace", types=Figure().canvas.get_supported_filetypes())
        if image == "-":  # standard input, as cat and convert read "-"
            data = _read_stream(sys.stdin.buffer, "standard input")
            if not data:
                raise AskError("empty standard input (0 bytes): pipe an image into `spote ask -`")
            img = load_image(data, max_pixels)
        elif is_remote(image):  # a Path would have read "s3://b/k" as the folder "s3:/b"
            from . import _read_image

            img = _read_image(image, None, max_pixels)
        else:
            img = load_image(_image_input(Path(local_path(image))), max_pixels)
    except BadImage as err:  # the one line names the file, as a batch script's log needs
        name = "standard input" if image == "-" else redact_uri(image)  # no signature or password in logs
        if err.kind:  # a PDF, an Office document, a web page: what it is, and what to give instead
            _fail(f"{name} is {err.kind}: spote ask reads images; {err.advice}")
        said = f"{err}, or raise --max-pixels" if isinstance(err, ImageTooLarge) else str(err)
        _fail(said if name in said else f"{name}: {said}")
    except (AskError, ValueError) as err:
        _fail(str(err))
    try:
        adapter = load_adapter(model, revision=revision, endpoint=endpoint, relevance=cfg.use_relevance,
                               endpoint_options=ep_options, trust_remote_code=trust_remote_code)
    except ModelNotFound as err:
        _fail(str(err))
    except Exception as err:  # no config or weights, a broken checkpoint, bad endpoint flags: the model the user named
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _fail(f"cannot load the model {model if model is not None else 'spote-tiny'!r}: {first}")
    try:
        # given a budget, every search method is held to it, as `spote bench --budget` does; without one each
        # runs at its own defaults (scaffold's two steps, grid's every window, zoomeye's 256 passes)
        held = held_to_budget(None if budget is None and "budget" not in overrides else cfg.budget)
        result = run_method(method, adapter, img, q, ch, cfg, **held)
    except EndpointError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1)
    except ValueError as err:  # what only the model can check, e.g. a question longer than it reads
        _fail(str(err))
    trace_error = None
    if trace:
        from .trace import plot_trace

        try:
            plot_trace(img, result, trace, q, input_size=adapter.input_size)
        except Exception as err:  # what the early check cannot see (a disk full, .pgf without LaTeX): one line,
            # after the answer, which the search paid for
            first = str(getattr(err, "strerror", None) or err).strip().splitlines()
            trace_error = f"cannot write the trace {trace}: {first[0] if first else type(err).__name__}"
    if as_json:  # strict JSON: a NaN or infinity (which no JSON parser need read) is written null
        typer.echo(json.dumps(json.loads(json.dumps(result.to_dict()), parse_constant=lambda _: None), allow_nan=False))
    else:
        # an empty open answer is the model ending at once: nothing read (confidence 0); say so rather than print nothing
        typer.echo(f"answer:      {result.answer if result.answer else '(nothing read)'}")
        typer.echo(f"confidence:  {result.confidence:.3f}")
        typer.echo("entropy:     " + " -> ".join(f"{h:.3f}" for h in result.entropy_trace) + "  (nats)")
        typer.echo(f"passes:      {result.forward_passes}  ({result.seconds:.2f} s, mode {result.mode})")
        if trace and not trace_error:
            typer.echo(f"trace:       {trace}")
    if trace_error:
        _fail(trace_error)


@app.command()
def bench(
    split: str = typer.Option("test"),
    n: int = typer.Option(600, min=0, help="closed items (0: open items alone, with --open-items)"),
    seed: int = typer.Option(0),
    methods: str = typer.Option("baseline,oracle,grid,vicrop,api,naive_entropy,random,spote"),
    out: Path = typer.Option(Path("out/bench.json")),
    model: Optional[str] = MODEL_OPTION,
    revision: Optional[str] = REVISION_OPTION,
    trust_remote_code: bool = TRUST_REMOTE_CODE_OPTION,
    endpoint: Optional[str] = ENDPOINT_OPTION,
    api_key_env: Optional[str] = API_KEY_ENV_OPTION,
    endpoint_concurrency: Optional[int] = ENDPOINT_CONCURRENCY_OPTION,
    endpoint_opts: str = ENDPOINT_OPTIONS_OPTION,
    corrupt: str = typer.Option("none", help="none | noise | blur | jpeg"),
    mode: Optional[str] = typer.Option(None, help="highlight | zoom | zoom+context (default: the policy's, zoom+context)"),
    plot: bool = typer.Option(True, help="write accuracy vs forward passes next to the JSON"),
    policy: str = typer.Option("{}", help='PolicyConfig overrides as JSON, e.g. \'{"min_window": 1.5}\''),
    device: Optional[str] = typer.Option(None, help="cpu | cuda (default: cuda when there is one)"),
    dtype: Optional[str] = typer.Option(None, help="float32 | bfloat16 | float16 (default: bfloat16 on cuda)"),
    budget: Optional[int] = typer.Option(None, help="hold every search method to this many forward passes per item "
                                                    "(matched cost); default: each method at its defaults"),
    open_items: int = typer.Option(0, "--open-items", min=0,
                                   help="open items (codes read from document fields) after the N closed ones; "
                                        "each method's JSON gains their figures under \"open\""),
):
    """Run SpotBench and print a table; write the JSON (and a plot)."""

    from .adapters.endpoint import EndpointError, endpoint_options
    from .bench.run import run_bench
    from .core import PolicyConfig
    from .loading import ModelNotFound

    try:  # the same one-line errors as `ask`, before any model loads
        if n == 0 and open_items == 0:
            raise AskError("nothing to run: --n and --open-items are both 0")
        from .baselines import METHODS

        names = [m.strip() for m in methods.split(",") if m.strip()]
        if not names:
            raise AskError("--methods names no method")
        if len(set(names)) < len(names):  # the same method twice would be run twice and its results keyed once
            twice = sorted({m for m in names if names.count(m) > 1})
            raise AskError(f"--methods names {', '.join(map(repr, twice))} more than once")
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise AskError(f"--methods: unknown method{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(map(repr, unknown))}; expected some of {', '.join(METHODS)}")
        from .bench.scenes import SPLITS
        from .images import CORRUPTIONS

        if split not in SPLITS:
            raise AskError(f"--split {split!r}: expected one of {sorted(SPLITS)}")
        if corrupt not in CORRUPTIONS:
            raise AskError(f"--corrupt {corrupt!r}: expected one of {list(CORRUPTIONS)}")
        # --seed draws SpotBench's items and seeds each search, unless --policy gives the search its own seed
        if budget is not None:
            try:
                PolicyConfig(budget=budget)  # as run_bench holds the search to it
            except ValueError as err:
                raise AskError(f"--budget {budget}: {err}") from err
        # --budget and --policy's budget must agree, as in `ask` (--budget 16 with {"budget": 8} ran 16 silently)
        cfg = PolicyConfig(**{"seed": seed, **policy_with_flags(parse_policy(policy), mode=mode, budget=budget)})
        if plot and out.suffix.lower() == ".png":  # the chart goes to out.with_suffix(".png"): it would replace the JSON
            raise AskError(f"--out {out}: names the results JSON, and the chart is written beside it as .png; "
                           f"give a name ending .json")
        check_endpoint_flags(endpoint, endpoint_options(api_key_env, endpoint_concurrency, endpoint_opts))
        check_output_file(out, "--out")  # last: every flag is checked before anything is made
    except (AskError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    try:
        run_bench(split=split, n=n, seed=seed, methods=methods.split(","), out=out, model=model, corrupt=corrupt,
                  mode=cfg.mode, plot=plot, cfg=cfg, device=device, dtype=dtype, budget=budget, revision=revision, endpoint=endpoint,
                  endpoint_options=endpoint_options(api_key_env, endpoint_concurrency, endpoint_opts), n_open=open_items,
                  trust_remote_code=trust_remote_code)
    except (ModelNotFound, EndpointError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2 if isinstance(err, (ModelNotFound, ValueError)) else 1)
    except OSError as err:  # the results could not be written (a full disk); what was there stays as it was
        typer.echo(f"error: cannot write {err.filename or out}: {err.strerror or err}", err=True)
        raise typer.Exit(1)


def _click_exceptions(name: str) -> tuple[type, ...]:
    """The exception class ``name`` of click and of the click typer carries inside it (typer >= 0.24
    vendors click as ``typer._click``); whichever are installed."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if cls is not None:
            found.append(cls)
    return tuple(found)


def run_cli(typer_app: typer.Typer) -> None:
    """Run a command-line app, a usage error (a value that is not a number, an unknown option or
    command, a missing argument) printed as one line ``error: ...`` with exit code 2 instead of a
    framed box: batch scripts grep one line. ``--help`` and an empty command line print the help.
    Off a terminal (a log, a pipe) the hub's and transformers' progress bars are off unless
    ``HF_HUB_DISABLE_PROGRESS_BARS`` says otherwise: their ``\r`` redraws clutter a log."""
    import os
    import sys

    if not sys.stderr.isatty():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is first imported
    try:
        code = typer_app(standalone_mode=False)
    except _click_exceptions("NoArgsIsHelpError") as err:
        text = err.ctx.get_help()  # typer's rich help prints itself to stdout and returns ""; plain click's returns it
        if text:
            typer.echo(text)
        sys.exit(err.exit_code)
    except _click_exceptions("ClickException") as err:
        ctx = getattr(err, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {' '.join(err.format_message().split())}{hint}", err=True)
        sys.exit(err.exit_code)
    except _click_exceptions("Abort"):
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def main():
    run_cli(app)


if __name__ == "__main__":
    main()
