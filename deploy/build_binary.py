"""Build one self-contained executable of the sidecar (interpreter and dependencies inside).

    python deploy/build_binary.py [--dist DIR]     # `make binary` runs this; needs pyinstaller

The result runs on machines of the same OS, C library and CPU architecture as the build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build(dist: Path) -> Path:
    from PyInstaller.__main__ import run  # imported here: only this build needs it

    with tempfile.TemporaryDirectory(prefix="sidecar-build-") as work:
        run(
            [
                "--onefile",
                "--name=sidecar",
                f"--distpath={dist}",
                f"--workpath={work}",
                f"--specpath={work}",
                "--log-level=WARN",
                "--noconfirm",
                "--collect-submodules=sidecar",
                "--hidden-import=uvloop.loop",  # imported by name at run time
                # The otel extra stays out (some 10 MB): a table that configures tracing is
                # refused at load by the executable, with the pip command to use instead.
                "--exclude-module=opentelemetry",
                "--exclude-module=google.protobuf",
                str(ROOT / "sidecar" / "__main__.py"),
            ]
        )
    return dist / "sidecar"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dist", default=str(ROOT / "dist"), help="where the executable goes")
    built = build(Path(parser.parse_args().dist).resolve())
    print(built)
    return 0


if __name__ == "__main__":
    sys.exit(main())
