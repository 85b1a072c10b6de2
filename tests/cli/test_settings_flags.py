"""Every command that computes or uses a map takes the same settings flags and passes them on."""

from __future__ import annotations

import argparse
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from mapslib import cli
from mapslib.foundation.settings import DEFAULTS, MapSettings

MAP_COMMANDS = ["relations", "salient", "correlate", "ablate", "known-heads", "heads"]
FLAGS = {"embedding", "k", "bias", "min_pairs", "tau", "norms"}
ASKED = ["--embedding", "raw", "--k", "3", "--bias", "value", "--min-pairs", "7", "--tau", "0.3"]
ASKED += ["--norms", "fold"]
WANT = MapSettings(embedding="raw", k=3, bias="value", min_pairs=7, tau=0.3, norms="fold")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flag(action: argparse.Action) -> tuple:
    return (tuple(action.option_strings), action.choices, action.default, action.type, action.help)


def test_every_map_command_has_the_same_settings_flags() -> None:
    parsers = _subparsers()
    seen = {}
    for name in MAP_COMMANDS:
        actions = {a.dest: _flag(a) for a in parsers[name]._actions if a.dest in FLAGS}
        assert set(actions) == FLAGS, name
        seen[name] = actions
    first = seen[MAP_COMMANDS[0]]
    assert all(s == first for s in seen.values())
    assert {d: f[2] for d, f in first.items()} == DEFAULTS.record()  # defaults from the class


class Reached(Exception):
    """Raised by a stand-in entry point once it has seen the settings."""


def _stand_in(seen: list[MapSettings]) -> Any:
    def run(*_args: Any, settings: MapSettings, **kw: Any) -> pd.DataFrame:
        seen.append(settings)
        raise Reached

    return run


FAKE_LM = SimpleNamespace(hw=SimpleNamespace(n_layers=2, n_heads=2), tokenizer=None)

ENTRY = {  # command -> (module the command reads its entry point from, name, extra arguments)
    "relations": ("mapslib.relation_map.scores", "run_relation_map", []),
    "salient": ("mapslib.salient.mappings", "run_salient", []),
    "correlate": ("mapslib.relation_map.scores", "static_scores", []),
    "ablate": ("mapslib.relation_map.scores", "static_scores", []),
    "known-heads": ("mapslib.relation_map.scores", "static_scores", []),
    "heads": ("mapslib.relation_map.reverse", "run_heads", ["--source", " a", "--target", " b"]),
}


@pytest.mark.parametrize("command", MAP_COMMANDS)
def test_a_non_default_setting_reaches_the_computation(
    command: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, name, extra = ENTRY[command]
    seen: list[MapSettings] = []
    monkeypatch.setattr(f"{module}.{name}", _stand_in(seen))
    for mod in ("maps", "behaviour", "heads"):
        monkeypatch.setattr(f"mapslib.cli.{mod}.load", lambda args: (FAKE_LM, 0.0), raising=False)
    out = tmp_path / ("out.json" if command == "salient" else "out.csv")
    argv = [command, "--model", "smollm2-135m", *ASKED, *extra, "--out", str(out)]
    with pytest.raises(Reached):
        cli.main(argv)
    assert seen == [WANT]


@pytest.mark.parametrize("command", ["correlate", "ablate", "known-heads"])
def test_behaviour_commands_pass_the_settings_to_their_experiment(
    command: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = {"correlate": "mapslib.behaviour.correlation.run_dynamic_scores"}
    run |= {"ablate": "mapslib.behaviour.ablation.run_ablation"}
    run |= {"known-heads": "mapslib.behaviour.known_heads.run_known_heads"}
    static = pd.DataFrame()
    static.attrs["source"] = "a stand-in"
    monkeypatch.setattr("mapslib.relation_map.scores.static_scores", lambda *a, **k: static)
    monkeypatch.setattr("mapslib.cli.behaviour.load", lambda args: (FAKE_LM, 0.0))
    seen: list[MapSettings] = []
    monkeypatch.setattr(run[command], _stand_in(seen))
    with pytest.raises(Reached):
        cli.main([command, *ASKED, "--out", str(tmp_path / "out.csv")])
    assert seen == [WANT]


@pytest.mark.parametrize("command", MAP_COMMANDS)
@pytest.mark.parametrize(
    "bad, says",
    [
        (["--embedding", "nope"], "invalid choice: 'nope'"),
        (["--norms", "apply"], "invalid choice: 'apply'"),
        (["--k", "0"], "k must be a positive integer"),
        (["--tau", "0"], "tau must lie in (0, 1]"),
        (["--tau", "1.5"], "tau must lie in (0, 1]"),
        (["--min-pairs", "0"], "min_pairs must be a positive integer"),
    ],
)
def test_a_bad_setting_is_one_line_before_any_loading(
    command: str, bad: list[str], says: str, tmp_path: Any, capsys: pytest.CaptureFixture
) -> None:
    extra = ENTRY[command][2]
    out = tmp_path / ("out.json" if command == "salient" else "out.csv")
    code = cli.main([command, "--model", "no-such-model", *bad, *extra, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and says in err
