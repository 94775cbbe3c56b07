#!/usr/bin/env python3
"""Bootstrap and run: the only thing a fresh clone needs is Python 3.11+.

    python3 dev.py serve [ARGS...]   start the connector (SQLite + sandbox without credentials)
    python3 dev.py test [PYTEST ARGS...]   run the whole test suite
    python3 dev.py lint              ruff (lint + format check) and mypy --strict
    python3 dev.py bench [ARGS...]   run bench/throughput.py
    python3 dev.py bench compare [ARGS...]   bench/setup.sh, then bench/compare.py (vs the
                                     alternatives; writes docs/benchmarks.md figures)
    python3 dev.py cli ARGS...       any posthog-customerio command

It creates ``.venv`` beside this file and installs the project with its dev extra into it,
again only when ``pyproject.toml`` changes. Ctrl-C, SIGTERM and SIGHUP are passed on to the
command, and dev.py exits with its exit code once it has stopped.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".dev-stamp"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit("posthog-customerio needs Python 3.11 or newer")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want:
        return
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing posthog-customerio[dev] into .venv", file=sys.stderr)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(want)


FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(argv: list[str]) -> int:
    """Run ``argv`` with ``.venv``'s bin first on PATH; pass signals on; its exit code.

    The command gets a session of its own, so a Ctrl-C reaches it once, from us: from the
    terminal as well, a second SIGINT would make ``serve`` stop without draining. We wait for
    it however long its graceful stop takes (``subprocess.call`` kills it 0.25 s after a
    Ctrl-C, with requests in flight).
    """
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    child: subprocess.Popen[bytes] | None = None
    pending: list[int] = []  # a signal that came before the command started

    def forward(signum: int, frame: object) -> None:
        if child is None:
            pending.append(signum)
        else:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True)
        for signum in pending:
            child.send_signal(signum)
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0
    ensure_venv()
    cmd, rest = args[0], args[1:]
    py = str(BIN / "python")
    if cmd == "serve":
        return run([py, "-m", "posthog_customerio", "serve", *rest])
    if cmd == "test":
        return run([py, "-m", "pytest", *rest])
    if cmd == "lint":
        rc = run([py, "-m", "ruff", "check", "."])
        rc |= run([py, "-m", "ruff", "format", "--check", "."])
        rc |= run([py, "-m", "mypy"])
        return rc
    if cmd == "bench" and rest[:1] == ["compare"]:
        return run(["bash", "bench/setup.sh"]) or run([py, "bench/compare.py", *rest[1:]])
    if cmd == "bench":
        return run([py, "bench/throughput.py", *rest])
    if cmd == "cli":
        return run([py, "-m", "posthog_customerio", *rest])
    print(f"dev.py: unknown command {cmd!r}; see python3 dev.py --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # during the install: pip has stopped too
        sys.exit(130)
