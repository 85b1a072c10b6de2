"""README.md stays short, and its module map names exactly the modules under mapslib/.

The map is the table whose header is `| package | modules |`: each row's first cell names a package
(`foundation/`) or a top-level module (`errors.py`); for a package, the second cell names its
modules as code spans ending in `.py`. Every other code span in a row (`MapSettings`, ...) is prose.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "mapslib"
MAX_LINES = 120
HEADER = re.compile(r"^\|\s*package\s*\|\s*modules\s*\|\s*$")
SPAN = re.compile(r"`([^`]+)`")
MODULE = re.compile(r"^[A-Za-z_]\w*\.py$")
NOT_LISTED = {
    "__init__.py",
    "__main__.py",
}  # need no entry (listed when they hold code worth naming)


def map_rows(text: str) -> list[list[str]]:
    """The cells of the module map's rows (after its header and separator)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if HEADER.match(line)), None)
    assert start is not None, "README.md has no module map (a table headed `| package | modules |`)"
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def listed_modules(text: str) -> set[str]:
    """Paths relative to mapslib/ that the map names: `errors.py`, `foundation/models.py`, ..."""
    out: set[str] = set()
    for row in map_rows(text):
        first = SPAN.fullmatch(row[0])
        assert first, f"a module map row must start with one code span: {row[0]!r}"
        name = first.group(1)
        if name.endswith("/"):
            modules = [m for m in SPAN.findall(row[1] if len(row) > 1 else "") if MODULE.match(m)]
            assert modules, f"the module map lists no module of {name}"
            out.update(name + m for m in modules)
        else:
            assert MODULE.match(name), f"not a package (`name/`) or a module (`name.py`): {name!r}"
            out.add(name)
    return out


def tree_modules(package: Path = PACKAGE) -> set[str]:
    """Every module of mapslib and its packages (folders with an __init__.py), relative paths."""
    return {
        p.relative_to(package).as_posix()
        for p in package.rglob("*.py")
        if p.name not in NOT_LISTED
        and all((package / d / "__init__.py").is_file() for d in _folders(p.relative_to(package)))
    }


def _folders(relative: Path) -> list[Path]:
    """The folders on the way to a module: a/b/c.py -> [a, a/b]."""
    return [Path(*relative.parts[: i + 1]) for i in range(len(relative.parts) - 1)]


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, (
        f"README.md has {n} lines; keep it to {MAX_LINES} (measurements go to benchmarks/README.md)"
    )


def test_module_map_names_only_modules_that_exist() -> None:
    listed = listed_modules(README.read_text(encoding="utf-8"))
    missing = sorted(m for m in listed if not (PACKAGE / m).is_file())
    assert not missing, f"README.md's module map names modules that do not exist: {missing}"


def test_every_module_is_in_the_module_map() -> None:
    listed = listed_modules(README.read_text(encoding="utf-8"))
    absent = sorted(tree_modules() - listed)
    assert not absent, f"modules under mapslib/ missing from README.md's module map: {absent}"


def test_the_parser_reads_packages_and_top_level_modules() -> None:
    text = (
        "| package | modules |\n|---|---|\n"
        "| `errors.py` | the errors, with `MapsError` |\n"
        "| `foundation/` | `models.py` loading; `settings.py` `MapSettings` and `DEFAULTS` |\n"
        "\nafter the table: `ignored.py`\n"
    )
    assert listed_modules(text) == {"errors.py", "foundation/models.py", "foundation/settings.py"}


def test_benchmarks_readme_is_linked() -> None:
    assert "benchmarks/README.md" in README.read_text(encoding="utf-8")
    assert (ROOT / "benchmarks" / "README.md").is_file()
