"""`qk-edit` and `qk-generate`: thin command lines over `EditSession`.

    qk-edit [--bundle DIR] --image IN --instruction TEXT [--box x0,y0,x1,y1] --out OUT
            [--steps N] [--seed S] [--backend auto|ov-cpu|ort-cpu|ort-cuda|ort-trt|tensorrt]
            [--sparse none|region] [--json TIMINGS.json] [--overwrite-input]
    qk-generate [--bundle DIR] --prompt TEXT --out OUT [--steps N] [--seed S] [--guidance G] ...

Without --bundle, the shipped default bundle engines/default/int8. Errors print one line and
exit with status 2; warnings (a truncated instruction) print one line each. The image and the
timings JSON are written atomically (a temporary file in the same folder, then a rename).
Outputs are checked before the work: neither may be a file inside the bundle (or the sibling
bundle it shares a text encoder with), --json may not be --image or --out, and --out may be
--image only with --overwrite-input.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import warnings
from pathlib import Path

from .backend import CHOICES
from .engines import atomic_write
from .errors import InputError, QKRuntimeError
from .files import check_output, same_file
from .inputs import check_writable


def _image_format(path: Path) -> str:
    """The Pillow format --out's extension names, if Pillow can write an RGB image in it."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"--out {path}: cannot tell the image format from {path.suffix!r}; use .png, .jpg, .webp or .bmp")
    try:  # some formats Pillow saves take no RGB (XBM, MSP, ...): find out now, not after the edit
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=fmt)
    except Exception as exc:
        raise InputError(f"--out {path}: Pillow cannot write an RGB image as {fmt} ({exc}); use .png, .jpg, .webp or .bmp") from exc
    return fmt


def check_outputs(args) -> None:
    """Everything about --out and --json that can fail, checked before the work: the format,
    the folder, and that neither replaces an input (the image, a file of the bundle)."""
    from .bundle import open_bundle
    from .session import default_bundle_dir

    _image_format(args.out)
    check_writable("--out", args.out)
    if args.json is not None:
        check_writable("--json", args.json)
        if args.json.absolute() == args.out.absolute():
            raise InputError(f"--json {args.json} is the --out image; give the timings their own file")
    bundle = open_bundle(args.bundle if args.bundle is not None else default_bundle_dir(), verify=False)
    folders = [("the bundle" if k == 0 else "the bundle's shared text encoder bundle", f)
               for k, f in enumerate(bundle.folders)]
    image = Path(args.image) if getattr(args, "image", None) else None
    replaces_image = image is not None and same_file(args.out, image)
    if replaces_image and not args.overwrite_input:
        raise InputError(f"--out {args.out} is the --image file: the edit would replace your image; choose another "
                         f"--out, or pass --overwrite-input to replace it on purpose")
    check_output("--out", args.out, inputs=[] if replaces_image else [("--image", image)], folders=folders)
    if args.json is not None:
        check_output("--json", args.json, inputs=[("--image", image), ("--out", args.out)], folders=folders)


def _write(path: Path, data: bytes) -> None:
    try:
        atomic_write(path, data)
    except OSError as exc:  # still possible after check_outputs (a disk that filled up, a folder removed)
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def save_image(image, path: Path) -> None:
    from PIL import Image

    fmt = _image_format(path)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    _write(path, buf.getvalue())


def save_json(data: dict, path: Path) -> None:
    _write(path, (json.dumps(data, indent=2) + "\n").encode())


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", type=Path, default=None, help="bundle folder (default: the shipped engines/default/int8)")
    p.add_argument("--out", type=Path, required=True, help="output image (.png, .jpg, ...)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the bundle's); a few-step bundle (format 5) runs the counts its "
                        "manifest's few_step lists, e.g. 4, with its shortcut sampler")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--backend", choices=CHOICES, default="auto", help="backend (default auto: the fastest available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime / OpenVINO (default: all cores)")
    p.add_argument("--json", type=Path, default=None, help="write per-stage timings (milliseconds) to this JSON file")
    p.add_argument("--spin", action="store_true",
                   help="ONNX Runtime backends: idle threads spin between ops instead of sleeping in the denoising loop "
                        "(about 10%% faster edits on a dedicated 2-core CPU; on a shared CPU they steal cycles from other work). Default off")


def _spin(args) -> dict:
    return {"spinning": True} if args.spin else {}


def _report(prog: str, session, result, args) -> None:
    h, w = result.image.shape[:2]
    print(f"{prog}: wrote {args.out} ({w}x{h}) in {result.timings['total']:.1f} ms ({session.open_ms:.0f} ms to load), {result.steps} steps, "
          f"backend {session.backend_name} ({session.backend_reason})")
    if args.json is not None:
        save_json({
            "bundle": str(session.bundle.path),
            "backend": session.backend_name,
            "backend_reason": session.backend_reason,
            "steps": result.steps,
            "seed": result.seed,
            "active_tokens": result.active_tokens,
            "open_ms": session.open_ms,
            "timings_ms": result.timings,
        }, args.json)


def _run(prog: str, work) -> int:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                work()
            finally:
                for w in caught:
                    print(f"{prog}: warning: {w.message}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except QKRuntimeError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else still gets one line, not a traceback
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


def edit_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="qk-edit", description="Edit an image with a query-kontext bundle.")
    p.add_argument("--image", required=True, help="input image file")
    p.add_argument("--instruction", required=True, help="what to change, e.g. 'make the red circle blue'")
    p.add_argument("--box", default=None, help="region x0,y0,x1,y1 in the input's pixels (x1, y1 exclusive)")
    p.add_argument("--sparse", choices=("none", "region"), default=None,
                   help="region: run the decoder on the edited region only (default: region if the bundle has it)")
    p.add_argument("--text-guidance", type=float, default=None, help="text guidance, 0 to 100 (default: the bundle's)")
    p.add_argument("--image-guidance", type=float, default=None, help="image guidance, 0 to 100 (default: the bundle's)")
    p.add_argument("--overwrite-input", action="store_true",
                   help="allow --out to be the --image file (the edit replaces it); without it that is refused")
    _common(p)
    args = p.parse_args(argv)

    def work():
        from .session import EditSession

        check_outputs(args)  # fail before the work, not after
        with EditSession(args.bundle, backend=args.backend, threads=args.threads, **_spin(args)) as session:
            result = session.edit(args.image, args.instruction, args.box, steps=args.steps, seed=args.seed,
                                  text_guidance=args.text_guidance, image_guidance=args.image_guidance, sparse=args.sparse)
            save_image(result.image, args.out)
            _report("qk-edit", session, result, args)

    return _run("qk-edit", work)


def generate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="qk-generate", description="Generate an image with a query-kontext bundle.")
    p.add_argument("--prompt", required=True, help="what to draw, e.g. 'a red circle at the top left'")
    p.add_argument("--guidance", type=float, default=None, help="text guidance scale, 0 to 100 (default: the bundle's)")
    _common(p)
    args = p.parse_args(argv)

    def work():
        from .session import EditSession

        check_outputs(args)
        with EditSession(args.bundle, backend=args.backend, threads=args.threads, **_spin(args)) as session:
            result = session.generate(args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed)
            save_image(result.image, args.out)
            _report("qk-generate", session, result, args)

    return _run("qk-generate", work)


if __name__ == "__main__":
    sys.exit(edit_main())
