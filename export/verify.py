"""Check a written bundle the way the runtimes will: the runtime's own loader reads the manifest,
checks every graph against the export contract and recomputes the sha256 of every listed file,
raising `BundleError` that names the file that is missing or differs."""
from __future__ import annotations

from pathlib import Path

from qk_runtime.bundle import Bundle, open_bundle
from qk_runtime.errors import BundleError

__all__ = ["BundleError", "verify_bundle"]


def verify_bundle(bundle: str | Path) -> Bundle:
    """Raise BundleError naming the file if a listed file is missing or its bytes changed;
    also refuse files in the folder that the manifest does not list (they would ride along
    unverified). Returns the opened bundle."""
    folder = Path(bundle)
    opened = open_bundle(folder, verify=True)
    unlisted = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                      if p.is_file() and p.name != "manifest.json" and p.relative_to(folder).as_posix() not in opened.files)
    if unlisted:
        raise BundleError(f"bundle {folder} holds files its manifest does not list: {unlisted}; "
                          f"remove them or re-export with qk-export")
    return opened
