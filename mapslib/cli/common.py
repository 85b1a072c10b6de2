"""What every command shares: the registry, the arguments of models and settings, checks, loading."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mapslib.errors import BadArgument
from mapslib.foundation.models import ALIASES, DEFAULT_MODEL
from mapslib.foundation.settings import BIASES, DEFAULTS, EMBEDDINGS, NORMS, MapSettings

COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {}
log = logging.getLogger("mapslib").info


def command(name: str) -> Callable:
    """Register a `cmd_*` function as a subcommand."""

    def register(fn: Callable[[argparse.Namespace], None]) -> Callable:
        COMMANDS[name] = fn
        return fn

    return register


# --- arguments shared by commands --------------------------------------------------------------------


def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias ({', '.join(ALIASES)}), .gguf path, folder or hub id",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a hub model's own code (off by default)",
    )


def weights_only_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="read only the weights this needs from the checkpoint (safetensors folder or .gguf), "
        "one layer at a time, without building the model: for models larger than memory; same "
        "scores",
    )


def offload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="DEVICE=SIZE,...",
        help="for a model larger than memory (a safetensors folder or hub id): accelerate keeps "
        "layers within e.g. cpu=8GiB or cuda=20GiB,cpu=60GiB and offloads the rest to "
        "--offload-folder; slow, every forward pass reads them back",
    )
    p.add_argument(
        "--offload-folder", default=None, metavar="DIR", help="where the offloaded layers go"
    )


def settings_args(p: argparse.ArgumentParser) -> None:
    """The map settings (foundation.settings.MapSettings), the same flags on every command that
    computes or uses a map; each default is the class's, shown in the help."""
    d = DEFAULTS
    g = p.add_argument_group("map settings (the same on every command that reads a map)")
    g.add_argument(
        "--embedding",
        default=d.embedding,
        choices=EMBEDDINGS,
        help="what heads read, E_in: paper (layer 0 E, later layers MLP_0(E)), raw (E) or "
        f"mlp0-residual (E + MLP_0(E)) (default: {d.embedding})",
    )
    g.add_argument(
        "--k",
        type=int,
        default=d.k,
        help="a relation's pair counts when its target is in the top-k of the source's row "
        "(default: PROTOCOL.md's rule by vocabulary size)",
    )
    g.add_argument(
        "--bias",
        default=d.bias,
        choices=BIASES,
        help="add b_V (value) or b_V and b_O (value+output) to the map; the paper omits both "
        f"(default: {d.bias})",
    )
    g.add_argument(
        "--min-pairs",
        type=int,
        default=d.min_pairs,
        help=f"score a relation only with this many single-token pairs (default: {d.min_pairs})",
    )
    g.add_argument(
        "--tau",
        type=float,
        default=d.tau,
        help=f"a head implements a relation when its score reaches tau (default: {d.tau})",
    )
    g.add_argument(
        "--norms",
        default=d.norms,
        choices=NORMS,
        help="ignore: no norm weights in the map (the paper's); fold: every norm weight on the "
        f"path applied as the forward pass applies it (default: {d.norms})",
    )


def settings_from(args: argparse.Namespace) -> MapSettings:
    """The MapSettings the flags name; a bad value is one line naming what is allowed."""
    return MapSettings(
        embedding=args.embedding,
        k=args.k,
        bias=args.bias,
        min_pairs=args.min_pairs,
        tau=args.tau,
        norms=args.norms,
    )


def relations_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--relations",
        nargs="+",
        default=None,
        metavar="NAME_OR_FILE",
        help=f"shipped names/aliases or .json/.csv files (default: {default})",
    )


def positive_or_all(value: str) -> int | None:
    """argparse type: a positive integer, or `all` (None)."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return int(value)


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Integer options that must be >= 1 when given."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise BadArgument(f"{flag} must be a positive integer, got {value}")


def check_out(path: str | None, suffixes: tuple[str, ...], flag: str = "--out") -> Path | None:
    if path is None:
        return None
    if Path(path).suffix.lower() not in suffixes:
        raise BadArgument(f"{flag} must end in {' or '.join(suffixes)}, got {path!r}")
    return Path(path)


def check_static(path: str | None) -> None:
    """A --static file must exist: said before the slow model load."""
    if path is not None and not Path(path).is_file():
        raise BadArgument(f"--static file not found: {path}")


def header(args: argparse.Namespace, t_load: float) -> dict[str, Any]:
    """What the command line adds to a sidecar: the command, its arguments, the time, load time."""
    return {
        "command": "python -m mapslib " + shlex.join(args.argv),
        "arguments": {k: v for k, v in vars(args).items() if k != "argv"},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "timings_s": {"load": round(t_load, 3)},
    }


def run_options(args: argparse.Namespace, settings: MapSettings, t_load: float) -> dict[str, Any]:
    """What every command passes its experiment's `run_*`: the map settings, a fresh computation
    (a command always recomputes), the sidecar's header and progress bars on a terminal."""
    return {
        "settings": settings,
        "recompute": True,
        "header": header(args, t_load),
        "progress": progress(),
    }


def load(args: argparse.Namespace) -> tuple[Any, float]:
    """The model the arguments name (only its weights, with --weights-only), and how long loading
    took."""
    from mapslib.foundation.models import load_model, load_weights

    t0 = time.perf_counter()
    if getattr(args, "offload_folder", None) and args.max_memory is None:
        raise BadArgument("--offload-folder needs --max-memory (e.g. cpu=8GiB): what stays loaded")
    if getattr(args, "max_memory", None) is not None:
        from mapslib.foundation.offload import parse_max_memory

        lm = load_model(
            args.model,
            device=args.device,
            trust_remote_code=args.trust_remote_code,
            max_memory=parse_max_memory(args.max_memory),
            offload_folder=args.offload_folder,
        )
        return lm, time.perf_counter() - t0
    load = load_weights if getattr(args, "weights_only", False) else load_model
    lm = load(args.model, device=args.device, trust_remote_code=args.trust_remote_code)
    return lm, time.perf_counter() - t0


def progress() -> bool:
    return sys.stderr.isatty()
