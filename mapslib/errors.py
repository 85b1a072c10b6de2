"""Errors a user can act on: each names the problem and the fix.

The command line prints these as one message (no traceback) and exits with status 2.
"""


class MapsError(ValueError):
    """Base class for every error mapslib raises on bad input."""


class UnknownModel(MapsError):
    """The model spec is not an alias, a .gguf file, a local folder, or a reachable hub id."""


class UnsupportedArchitecture(MapsError):
    """The model's architecture has no adapter."""


class RelationFileError(MapsError):
    """A relation file (JSON or CSV) is missing or malformed."""


class UnknownRelation(MapsError):
    """A relation name is neither shipped nor an existing file."""


class TooFewPairs(MapsError):
    """No requested relation keeps enough single-token pairs for this tokenizer."""


class TooFewNames(MapsError):
    """Too few IOI names are a single token (with a leading space) for this tokenizer."""


class MissingAPIKey(MapsError):
    """An LLM description was requested, but no API key is set in the environment."""


class BadArgument(MapsError):
    """A command-line or function argument is out of range or malformed."""
