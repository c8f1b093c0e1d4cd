"""How a user names an adapter: ``name`` (latest), ``name@3`` (a version), ``name:prod`` (an alias).

Names and aliases are validated here, once, so that nothing downstream ever sees a name that
looks like a path, a URL or a shell fragment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapterhub.errors import ConfigError

MAX_NAME_LENGTH = 64
MAX_VERSION = 2**31 - 1
# \Z, not $: "$" also matches before a trailing newline, which let "name\n" through
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_VERSION = re.compile(r"[0-9]{1,10}\Z")  # ASCII only: "²".isdigit() is True, int("²") fails
_FIX = (
    "use 1-64 characters: letters, digits, '-', '_' and '.', starting with a letter or digit "
    "(no '/', '..', spaces or ':'/'@', which separate aliases and versions)"
)


def validate_name(value: str, *, field: str = "name") -> str:
    """Return ``value`` if it is a valid adapter name or alias, else raise ConfigError."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field} {value!r} is empty; {_FIX}")
    if len(value) > MAX_NAME_LENGTH:
        raise ConfigError(f"{field} {value[:80]!r} is {len(value)} characters long; {_FIX}")
    if not _NAME.match(value) or ".." in value:
        raise ConfigError(f"{field} {value!r} is not allowed; {_FIX}")
    return value


@dataclass(frozen=True)
class AdapterRef:
    """A parsed ref. Exactly one of ``version`` and ``alias`` may be set; neither means latest."""

    name: str
    version: int | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Parse ``name``, ``name@N`` or ``name:alias``.

        Raises:
            ConfigError: the text is not a ref; the message says which form is expected.
        """
        if not isinstance(text, str):
            raise ConfigError(f"ref {text!r} is not a string; write name, name@3 or name:prod")
        text = text.strip()
        if "@" in text and ":" in text:
            raise ConfigError(
                f"ref {text!r} has both a version and an alias; write name@3 or name:prod"
            )
        if "@" in text:
            name, _, number = text.partition("@")
            if not _VERSION.match(number) or not 1 <= int(number) <= MAX_VERSION:
                raise ConfigError(
                    f"ref {text!r} has version {number!r}; versions are whole numbers from 1 "
                    f"to {MAX_VERSION}"
                )
            return cls(validate_name(name, field="adapter name"), version=int(number))
        if ":" in text:
            name, _, alias = text.partition(":")
            return cls(
                validate_name(name, field="adapter name"), alias=validate_name(alias, field="alias")
            )
        return cls(validate_name(text, field="adapter name"))

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name
