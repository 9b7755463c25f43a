"""qk-build --golden / --check: golden inputs and outputs saved in the bundle (listed with sha256),
and the one-command check of engines, or of an ONNX Runtime provider, against them. Here the CPU
provider stands in for the engines; the engine check itself needs TensorRT and skips without it."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest

from qk_export.verify import verify_bundle
from qk_runtime.build import main
from qk_runtime.bundle import open_bundle
from qk_runtime.contract import GOLDEN, GOLDEN_DATA

pytest.importorskip("polygraphy", reason="polygraphy not installed (pip install polygraphy): --golden/--check run its ONNX Runtime runner")

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [ROOT / "engines" / "default" / "int8", ROOT / "engines" / "default" / "fp32"]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relist(bundle: Path, name: str) -> None:
    """Record a rewritten file's sha256 in the manifest, as a legitimate writer would."""
    m = json.loads((bundle / "manifest.json").read_text())
    m["files"][name] = _sha(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")


@pytest.fixture()
def golden_copy(bundle_copy, capsys):
    sha_before = open_bundle(bundle_copy).sha
    assert main(["--golden", str(bundle_copy)]) == 0
    assert "golden outputs of" in capsys.readouterr().out
    return bundle_copy, sha_before


def test_golden_files_are_listed_with_sha256_and_keep_engines_valid(golden_copy):
    bundle, sha_before = golden_copy
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["golden"] == {"file": GOLDEN, "data": GOLDEN_DATA}
    for name in (GOLDEN, GOLDEN_DATA):
        assert m["files"][name] == _sha(bundle / name)
    verify_bundle(bundle)  # every file hashed, none unlisted
    assert open_bundle(bundle).sha == sha_before  # the key of built TensorRT engines does not change
    doc = json.loads((bundle / GOLDEN).read_text())
    assert sorted(doc["graphs"]) == sorted(m["graphs"])
    with np.load(bundle / GOLDEN_DATA, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    # chained inputs are stored once: the decoder's conditioning is decoder_cond's output
    cond = doc["graphs"]["decoder_cond"]["outputs"]
    assert all(doc["graphs"]["decoder"]["inputs"][k] == cond[k] for k in ("cond_kv", "cond_bias", "cond_emb"))
    assert {a.dtype for a in arrays.values()} <= {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.int64)}
    # fixed inputs from a real edit: the decoder step sits mid-trajectory and its gate opened somewhere
    dec = doc["graphs"]["decoder"]["inputs"]
    assert 0 < float(arrays[dec["sigma"]][0]) < 1 and arrays[dec["gate_map"]].any()


def test_cpu_check_passes_and_says_it_stands_in_for_the_engines(golden_copy, capsys):
    bundle, _ = golden_copy
    assert main(["--check", str(bundle), "--provider", "cpu"]) == 0
    out = capsys.readouterr().out
    n = len(open_bundle(bundle).graphs)
    assert "CPUExecutionProvider stands in for the TensorRT engines (no engine was run)" in out
    assert f"{n} graphs: {n} ok" in out and "MISMATCH" not in out


def test_a_perturbed_output_fails_naming_the_graph(golden_copy, capsys):
    bundle, _ = golden_copy
    doc = json.loads((bundle / GOLDEN).read_text())
    key = doc["graphs"]["decoder"]["outputs"]["velocity"]
    with np.load(bundle / GOLDEN_DATA, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    v = arrays[key].astype(np.float32)
    v.reshape(-1)[: max(1, v.size // 10)] += np.float32(0.2 * np.abs(v).max())  # a tenth of the outputs off by 20 %
    arrays[key] = v.astype(arrays[key].dtype)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (bundle / GOLDEN_DATA).write_bytes(buf.getvalue())
    _relist(bundle, GOLDEN_DATA)
    assert main(["--check", str(bundle), "--provider", "cpu"]) == 1
    captured = capsys.readouterr()
    assert "mismatch in graph(s) decoder on ONNX Runtime" in captured.err
    rows = {line.split()[0]: line for line in captured.out.splitlines()[3:-1]}
    assert "MISMATCH (velocity)" in rows["decoder"]
    assert all(line.endswith("ok") for graph, line in rows.items() if graph != "decoder")


def test_a_changed_golden_file_is_refused_by_its_sha256(golden_copy, capsys):
    bundle, _ = golden_copy
    data = bytearray((bundle / GOLDEN_DATA).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle / GOLDEN_DATA).write_bytes(bytes(data))
    assert main(["--check", str(bundle), "--provider", "cpu"]) == 2
    assert f"{GOLDEN_DATA} has sha256" in capsys.readouterr().err
    # saving again mends it (an interrupted --golden leaves exactly this)
    assert main(["--golden", str(bundle)]) == 0
    assert main(["--check", str(bundle), "--provider", "cpu"]) == 0


def test_golden_refuses_a_bundle_whose_graphs_changed(golden_copy, capsys):
    bundle, _ = golden_copy
    with open(bundle / "decoder.onnx", "ab") as f:
        f.write(b"\0")
    assert main(["--golden", str(bundle)]) == 2
    assert "decoder.onnx has sha256" in capsys.readouterr().err


def test_check_without_golden_files_says_how_to_make_them(fp32_bundle, capsys):
    assert main(["--check", str(fp32_bundle), "--provider", "cpu"]) == 2
    assert "has no golden outputs" in capsys.readouterr().err


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_shipped_bundles_carry_golden_files_and_pass_the_cpu_check(bundle, capsys):
    m = json.loads((bundle / "manifest.json").read_text())
    for name in (GOLDEN, GOLDEN_DATA):
        assert m["files"][name] == _sha(bundle / name), f"{bundle.name}/{name} is not listed with its sha256"
    assert sum((bundle / n).stat().st_size for n in (GOLDEN, GOLDEN_DATA)) < 250_000  # small beside the graphs
    assert main(["--check", str(bundle), "--provider", "cpu"]) == 0
    assert "MISMATCH" not in capsys.readouterr().out


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-TensorRT message cannot be checked")
def test_engine_check_without_tensorrt_exits_2_with_the_fix(capsys):
    assert main(["--check", str(SHIPPED[0])]) == 2
    assert "TensorRT is not installed" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TRT, reason="tensorrt not installed")
def test_engines_built_by_qk_build_pass_the_check(tmp_path, capsys):  # pragma: no cover - GPU only
    from qk_runtime.build import build_engines

    for bundle in SHIPPED:
        out = build_engines(bundle, tmp_path / bundle.name)
        assert main(["--check", str(bundle), "--engine-dir", str(out)]) == 0
        assert "stands in" not in capsys.readouterr().out


def test_cpp_runtime_hashes_a_bundle_with_golden_files_as_python(golden_copy):
    """The engine cache key's bundle hash leaves the golden files out in both runtimes."""
    from cpp_helpers import BUILD, probe

    if not (BUILD / "qk_cpp_probe").is_file():
        pytest.skip(f"the C++ runtime is not built in {BUILD} (runtime/cpp/build.sh)")
    bundle, sha_before = golden_copy
    assert probe(BUILD, "bundle", bundle)["sha"] == open_bundle(bundle).sha == sha_before
