import pytest

from adapterhub.core.refs import AdapterRef, validate_name
from adapterhub.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pirate", AdapterRef("pirate")),
        ("pirate@3", AdapterRef("pirate", version=3)),
        ("pirate:prod", AdapterRef("pirate", alias="prod")),
        ("json-v2.1_x", AdapterRef("json-v2.1_x")),
    ],
)
def test_parse_round_trips(text: str, expected: AdapterRef) -> None:
    assert AdapterRef.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../etc",
        "a/b",
        "a\\b",
        "x" * 65,
        "-lead",
        "a b",
        "a;rm -rf",
        "http://x",
        "p@0",
        "p@x",
        "p@1:a",
        "$(id)",
        "a..b",
        ".hidden",
    ],
)
def test_bad_refs_are_refused_with_the_value(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        AdapterRef.parse(bad)
    assert (
        repr(bad[:20])[:-1] in str(info.value)
        or "empty" in str(info.value)
        or "version" in str(info.value)
    )


def test_validate_name_names_the_field() -> None:
    with pytest.raises(ConfigError, match="alias 'a/b'"):
        validate_name("a/b", field="alias")
