"""Triton python-backend model written by `qk-triton` (query-kontext): one image edit (qk_edit) or
one generation (qk_generate) per request.

The loop is the query-kontext runtime's own (`qk_runtime.triton.bls.RepoSession`, an EditSession);
each network runs as a BLS request on the per-network models of this repository. This file only
turns Triton tensors into numpy arrays and back.

Needs `qk_runtime` in the python backend's environment: `pip install query-kontext` (numpy, pillow,
tokenizers, onnxruntime), the same version that wrote the repository (config.pbtxt parameter
`written_by`). The model's config.pbtxt parameters: `mode` (edit | generate), `verify_sha256`
(true: check every model file against the manifest at load time).
"""
import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

try:
    from qk_runtime.errors import InputError
    from qk_runtime.triton.bls import RepoSession, TritonBls, model_parameters, open_model_dir, run_request
except ImportError as exc:  # the python backend's environment lacks the runtime
    raise ImportError(
        f"this model needs the query-kontext runtime in Triton's python environment ({exc}); "
        f"pip install query-kontext in the Triton container (or point EXECUTION_ENV_PATH at an "
        f"environment that has it), then reload the model"
    ) from exc


def _error(message, code):
    codes = getattr(pb_utils.TritonError, code, None)  # error codes exist from Triton 23.09
    return pb_utils.TritonError(message, codes) if codes is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = model_parameters(args["model_config"])
        self.mode = params.get("mode")
        if self.mode not in ("edit", "generate"):
            raise pb_utils.TritonModelException(
                f"config.pbtxt parameter 'mode' is {self.mode!r}; it must be 'edit' or 'generate' (rewrite the "
                f"repository with qk-triton)")
        model_dir = Path(args["model_repository"]) / args["model_version"]
        repo = open_model_dir(model_dir, verify=params.get("verify_sha256", "true").lower() != "false")
        self.session = RepoSession(repo, TritonBls(pb_utils, repo.outputs, repo.batched))
        self.input_names = [t["name"] for t in config.get("input", [])]

    def execute(self, requests):
        responses = []
        for request in requests:
            tensors = {}
            for name in self.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:  # optional inputs may be absent
                    tensors[name] = tensor.as_numpy()
            try:
                outputs = run_request(self.session, self.mode, tensors)
            except InputError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(str(exc), "INVALID_ARG")))
                continue
            except Exception as exc:  # one failed request must not take the model down
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=_error(f"{type(exc).__name__}: {exc}", "INTERNAL")))
                continue
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses

    def finalize(self):
        self.session.close()
