"""Check that a built wheel holds every module and schema file of the source tree."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"detectors": "driftline/detectors", "schemas": "driftline/schemas",
           "streams": "driftline/streams", "benchmarks": "driftline/benchmarks"}


def main(wheel: str) -> int:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for src, dst in MAPPING.items():
        for f in (ROOT / src).rglob("*"):
            if f.is_dir() or "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            if f.suffix not in (".py", ".pyi", ".json", ".typed") or "results" in f.parts:
                continue
            rel = f.relative_to(ROOT / src).as_posix()
            if f"{dst}/{rel}" not in names:
                missing.append(f"{dst}/{rel}")
    stray = sorted(n for n in names if n.split("/")[0] in MAPPING)
    if stray:
        print("wheel has top-level packages that would collide with user code:", stray[:5])
        return 1
    if missing:
        print("wheel is missing:", *missing, sep="\n  ")
        return 1
    if not any(n.startswith("driftline/schemas/_scan.") and n.endswith(".so") for n in names):
        missing.append("driftline/schemas/_scan.*.so (the compiled scanner)")
    if not any(n.startswith("driftline/detectors/_id_index.") and n.endswith(".so") for n in names):
        missing.append("driftline/detectors/_id_index.*.so (the label join's id indexes)")
    if not any(n.startswith("driftline/detectors/_kernels.") and n.endswith(".so") for n in names):
        missing.append("driftline/detectors/_kernels.*.so (the window, histogram and segment "
                       "kernels)")
    if missing:
        print("wheel is missing:", *missing, sep="\n  ")
        return 1
    schemas = [n for n in names if n.endswith(".schema.json")]
    print(f"wheel ok: {len(names)} files, {len(schemas)} JSON schemas")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
