"""What `qk-serve` hands the page's "in this browser" mode: the JavaScript runtime (`runtime/web/`),
onnxruntime-web's files from the npm package installed beside it, and the bundle's own files.

Every file is served from a table fixed when the app is made, never from a path a request names:
- `/web/<name>`: the runtime's modules (`WEB_MODULES`, read once from the package);
- `/web/ort/<name>`: `ORT_FILES` from onnxruntime-web's `dist/` folder
  (`runtime/web/node_modules/onnxruntime-web`, installed by `npm ci --prefix runtime/web` at the
  version `runtime/web/package-lock.json` pins; another folder with `--ort-web-dir`);
- `/bundle/<bundle>/<file>`: the manifest and every file it lists, laid out as on disk (the shared
  text encoder `../<sibling>/<file>` becomes `/bundle/<sibling>/<file>`, the sibling's manifest
  beside it), so the browser checks each file's sha256 against the manifest as the runtimes do.

The page, these files and the bundle's are sent with `Cross-Origin-Opener-Policy: same-origin` and
`Cross-Origin-Embedder-Policy: require-corp`: a cross-origin isolated page may share memory
with workers, which onnxruntime-web's WebAssembly threads need.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..bundle import Bundle
from ..contract import MANIFEST

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}
NPM_CI = "npm ci --prefix runtime/web"
WEB_MODULES = ("qk.js", "session.js", "bundle.js", "backend.js", "contract.js", "tokenizer.js", "noise.js", "sampler.js",
               "composite.js", "image.js", "inputs.js", "png.js", "errors.js", "worker.js", "client.js")
# onnxruntime-web's ES module builds: WebAssembly only, and WebGPU (+ WebAssembly); each loads its
# glue module and .wasm from the same folder
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort.webgpu.min.mjs", "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm")
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8", ".wasm": "application/wasm",
               ".json": "application/json"}


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


def web_folder() -> Path:
    return Path(str(resources.files("qk_runtime") / "web"))


def load_modules() -> dict[str, bytes]:
    root = resources.files("qk_runtime") / "web"
    return {name: (root / name).read_bytes() for name in WEB_MODULES}


@dataclass(frozen=True)
class OrtWeb:
    """onnxruntime-web's installed files, or why the browser mode cannot run."""

    folder: Path | None
    version: str | None
    reason: str  # "" when available
    files: dict = field(default_factory=dict)  # name -> path

    @property
    def available(self) -> bool:
        return not self.reason


def pinned_version(web: Path) -> str | None:
    """The onnxruntime-web version runtime/web/package-lock.json pins, if the lock file is there."""
    lock = web / "package-lock.json"
    try:
        packages = json.loads(lock.read_text())["packages"]
        return packages["node_modules/onnxruntime-web"]["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_ort_web(dist: Path | None = None) -> OrtWeb:
    """The dist folder of the installed onnxruntime-web (`dist`, default beside the runtime), checked:
    present, the version package-lock.json pins, every file in ORT_FILES."""
    web = web_folder()
    default = dist is None
    package = web / "node_modules" / "onnxruntime-web" if default else Path(dist).parent
    folder = package / "dist" if default else Path(dist)
    fix = f"run `{NPM_CI}` in the repository and restart qk-serve" if default else "point --ort-web-dir at onnxruntime-web's dist folder"
    if not folder.is_dir():
        return OrtWeb(None, None, f"onnxruntime-web is not installed ({folder} is missing); {fix}")
    try:
        version = json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        version = None
    want = pinned_version(web)
    if default and want and version != want:
        return OrtWeb(folder, version, f"onnxruntime-web {version} is installed but package-lock.json pins {want}; {fix}")
    missing = [name for name in ORT_FILES if not (folder / name).is_file()]
    if missing:
        return OrtWeb(folder, version, f"onnxruntime-web in {folder} lacks {missing}; {fix}")
    return OrtWeb(folder, version, "", {name: folder / name for name in ORT_FILES})


def bundle_files(bundle: Bundle) -> tuple[str, dict[str, Path]]:
    """The bundle's URL folder (`<name>/`) and its served files: URL path under /bundle/ -> file."""
    name = bundle.path.resolve().name
    table = {f"{name}/{MANIFEST}": bundle.path / MANIFEST}
    for rel in bundle.files:
        url = posixpath.normpath(f"{name}/{rel}")
        table[url] = bundle.paths[rel]
        if rel.startswith("../"):  # the shared text encoder: its bundle's manifest too, for the browser's check
            sibling = rel.split("/")[1]
            table[f"{sibling}/{MANIFEST}"] = bundle.path.resolve().parent / sibling / MANIFEST
    return f"{name}/", table
