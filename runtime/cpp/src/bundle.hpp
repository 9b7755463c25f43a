// Open and validate a bundle (the folder qk-export writes): manifest.json's format and version,
// every file's sha256, the dims, each graph's tensors against the export contract (the C++ twin
// of runtime/contract.py's graph_specs), and the sampler settings. Mirrors runtime/bundle.py:
// the manifest is read under a size and depth limit (4 MiB, 64 levels), every file it names must
// resolve inside the bundle folder after symlinks (the shared text encoder: inside a sibling
// bundle that lists it as its own), and its numbers must be finite and within range.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tensor.hpp"

namespace qk {

constexpr int kFormatVersion = 5;     // 5: few-step sampling (the manifest's `few_step`; the decoders take step_size)
                                      // 4: the manifest's `composite` entry (how an edit meets its source)
                                      // 3: the decoder's per-edit conditioning is its own graph, decoder_cond
                                      // 2: the text encoder's token axis is dynamic
constexpr int kCompositeFormatVersion = 4;  // the first format whose manifest carries `composite`
constexpr int kFewStepFormatVersion = 5;    // the first format whose decoders may take `step_size` (with `few_step`)
constexpr int kMinFormatVersion = 1;  // 1: it takes exactly max_length tokens
constexpr int kMaxBatch = 3;
// the INT8 graphs stored weight-only where the manifest has no `quantization.weight_only` list
// (runtime/contract.py WEIGHT_ONLY_INT8_GRAPHS: bundles written before it, FP32 bundles sharing an
// INT8 text encoder)
inline const char* const kWeightOnlyInt8Graphs[] = {"text_encoder"};
// graphs whose ONNX Runtime sessions spin with SessionOptions::spinning: the denoising loop's
// (runtime/backend_ort.py SPIN_GRAPHS; the other sessions' spinning pools slowed edits on 2 cores)
inline const char* const kSpinGraphs[] = {"decoder", "decoder_region"};

struct Dims {
    int image_size = 0, latent_channels = 0, factor = 0, patch = 0, max_length = 0, text_width = 0,
        kontext_tokens = 0, width = 0, depth = 0;  // depth: decoder blocks (format 3; 0 before)
    int latent_size() const { return image_size / factor; }
    int cond_width() const { return 2 * width * depth; }  // cond_kv's last axis: keys and values per block
    int grid() const { return latent_size() / patch; }
    int tokens() const { return grid() * grid(); }
};

// A dimension is a number or the name of a dynamic axis ("batch", "active").
struct Dim {
    long long value = -1;
    std::string axis;
    bool operator==(const Dim& o) const { return value == o.value && axis == o.axis; }
};

struct TensorSpec {
    std::string name;
    DType dtype = DType::F32;
    std::vector<Dim> shape;
    bool operator==(const TensorSpec& o) const { return name == o.name && dtype == o.dtype && shape == o.shape; }
};

struct GraphInfo {
    std::string name;
    std::string file;  // relative to the bundle
    std::string path;  // absolute or relative to the working folder
    std::vector<TensorSpec> inputs, outputs;
    nlohmann::json profile;  // input -> {"min","opt","max"}
};

struct SamplerConfig {
    int steps = 20;
    double text_guidance = 3.0, image_guidance = 1.5;
    std::optional<double> gate_threshold;  // unset: the soft gate is used as is
    double shift = 1.0;
    std::vector<double> region_buckets{0.25, 0.5, 0.75, 1.0};  // a manifest without them: quarters (contract.py LEGACY_REGION_BUCKETS)
    int halo = 1;
};

// How an edit's output is composited with its source (manifest `composite`, format 4;
// runtime/composite.py). Gate (no entry): the source's pixels outside the gate. Changed: the
// source latent is decoded too, and inside the gate the source's pixels are kept where the two
// decodings agree: d = mean RGB |dec(x) - dec(src)| (0-1), w = clip((d - lo) / (hi - lo), 0, 1),
// `widen` 3 x 3 max filters, k = pix w, out = k dec(x) + (1 - k) src.
struct Composite {
    enum class Kind { Gate, Changed };
    Kind kind = Kind::Gate;
    double lo = 0.0, hi = 1.0;
    int widen = 0;
    bool decodes_source() const { return kind == Kind::Changed; }
};

// Format 5's `few_step` (runtime/contract.py FEW_STEP_FIELDS): the decoders take `step_size`. At
// the listed step counts the sampler runs the uniform sigmas (n - k) / n (no shift) and feeds
// step_size = sigma - sigma_next; at any other count the ordinary schedule and step_size 0.
struct FewStep {
    std::vector<int> steps;  // increasing, 1 .. 1000
    bool runs(int n) const;  // whether n steps run the few-step schedule
};

struct Bundle {
    std::string path;
    nlohmann::json manifest;
    Dims dims;
    std::string precision, sparse_attn;
    std::map<std::string, GraphInfo> graphs;
    SamplerConfig sampler;
    Composite composite;
    std::optional<FewStep> few_step;  // format 5's `few_step` (unset: the decoders take no step_size)
    // the INT8 graphs stored weight-only, opened with ONNX Runtime's Q/DQ fusion off: the manifest's
    // `quantization.weight_only`, else those of kWeightOnlyInt8Graphs in INT8 (runtime/bundle.py _weight_only)
    std::set<std::string> weight_only;
    std::string tokenizer_path;
    std::map<std::string, std::string> files;  // relative name -> sha256
    std::map<std::string, std::string> paths;  // relative name -> the checked, resolved file
    std::vector<std::string> folders;          // folders this bundle reads files from (itself, a sibling's)

    bool has(const std::string& g) const { return graphs.count(g) != 0; }
    bool has_gateway() const { return has("gateway"); }
    bool has_cmg() const { return has("cmg"); }
    bool has_region() const { return has("decoder_region"); }
    bool has_decoder_cond() const { return has("decoder_cond"); }  // format 3
    const GraphInfo& graph(const std::string& g) const;
    // sha256 of the canonical JSON of the files map (runtime/bundle.py files_digest)
    std::string sha() const;
};

// The export contract for these dims (runtime/contract.py graph_specs, batch axes as "batch").
// step_size (format 5): the decoder steps take the sampler's step size after sigma.
std::map<std::string, GraphInfo> contract_graphs(const Dims& d, bool gateway, bool gate, bool region,
                                                 int format_version = kFormatVersion, bool step_size = false);

// Throws BundleError naming what is wrong and how to fix it.
Bundle open_bundle(const std::string& path, bool verify = true);

}  // namespace qk
