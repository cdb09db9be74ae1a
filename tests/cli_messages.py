"""Library errors as `dwfc` prints them: the library names recipe keys (data.source, model.arch),
the command line shows their flags (--data, --arch). Tests of those messages match what a user
of the command line reads."""

import contextlib
import re
from collections.abc import Iterator

import pytest

from dwfc.cli.text import for_cli


@contextlib.contextmanager
def raises_on_cli(exc_type: type[BaseException], match: str) -> Iterator[pytest.ExceptionInfo]:
    """`pytest.raises(exc_type, match=match)`, matched against the message as the CLI shows it."""
    with pytest.raises(exc_type) as info:
        yield info
    shown = for_cli(info.value)
    assert re.search(match, shown), f"{match!r} does not match {shown!r}"
