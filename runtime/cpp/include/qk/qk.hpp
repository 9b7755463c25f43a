// The query-kontext runtime's C++ API.
//
//     qk::Session s("engines/default/int8");
//     qk::Image in = qk::load_png("photo.png");
//     qk::EditOptions opt;
//     opt.seed = 7;
//     qk::EditResult r = s.edit(in, "make the red circle blue", qk::Box{10, 8, 30, 28}, opt);
//     qk::save_png("out.png", r.image);
//
// It reproduces the Python runtime (qk_runtime.EditSession) step for step, so the same bundle,
// image, instruction, box and seed give the same pixels: see src/session.cpp for the algorithm.
// Errors are typed exceptions derived from qk::Error (InputError, BundleError, BackendError);
// the C API (qk.h) turns them into status codes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace qk {

// ------------------------------------------------------------------------------- errors

enum class ErrorCode : int { Input = 1, Bundle = 2, Backend = 3, OutOfMemory = 4, Internal = 5 };

class Error : public std::runtime_error {
public:
    Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ErrorCode code() const noexcept { return code_; }

private:
    ErrorCode code_;
};

// An image, box, instruction or option the runtime refuses.
class InputError : public Error {
public:
    explicit InputError(const std::string& m) : Error(ErrorCode::Input, m) {}
};

// A bundle folder that is missing, incomplete, corrupt or of another format.
class BundleError : public Error {
public:
    explicit BundleError(const std::string& m) : Error(ErrorCode::Bundle, m) {}
};

// A backend that cannot run here (library, device or engines missing) or that failed.
class BackendError : public Error {
public:
    explicit BackendError(const std::string& m) : Error(ErrorCode::Backend, m) {}
};

// ------------------------------------------------------------------------------- images

// 8-bit RGB, row-major, height x width x 3, no padding.
struct Image {
    int width = 0;
    int height = 0;
    std::vector<std::uint8_t> rgb;
};

// Read a PNG with the Python runtime's rules: palette, grey and 16-bit images become 8-bit RGB
// (16-bit grey: v / 257 rounded; 16-bit colour: the high byte, as Pillow does), alpha is
// composited over white, the eXIf orientation is applied, and images over 64 megapixels are
// refused from the header (decompression bombs). Throws InputError with the reason.
Image load_png(const std::string& path);
// Write an 8-bit RGB PNG, atomically (temporary file in the same folder, fsync, rename).
void save_png(const std::string& path, const Image& image);
// Bilinear resize, equal to Pillow's Image.resize((w, h), Image.BILINEAR) byte for byte.
Image resize_bilinear(const Image& image, int width, int height);

// ------------------------------------------------------------------------------- editing

// x0, y0 inclusive; x1, y1 exclusive; in the input image's pixels.
struct Box {
    int x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

enum class Sparse { Auto, None, Region };

struct EditOptions {
    int steps = 0;                          // 0: the bundle's default; else 1..1000
    std::optional<double> text_guidance;    // unset: the bundle's default
    std::optional<double> image_guidance;   // unset: the bundle's default
    std::uint64_t seed = 0;
    Sparse sparse = Sparse::Auto;           // Auto: Region when the bundle has the region decoder
};

struct SessionOptions {
    std::string backend = "ort-cpu";  // "ort-cpu" | "tensorrt" (when built with TensorRT)
    int threads = 0;                  // ONNX Runtime intra-op threads; 0: its default
    bool verify = true;               // check every file's sha256 against the manifest
    bool spinning = false;            // let idle ONNX Runtime threads spin (off, as in Python)
    std::string engine_dir;           // TensorRT: the folder qk-build wrote
};

struct EditResult {
    Image image;                                 // the input's size
    std::map<std::string, double> timings;       // milliseconds per stage (the Python keys)
    std::vector<double> decoder_steps;           // milliseconds per denoising step
    std::vector<float> gate;                     // (grid x grid) the CMG's gate in [0, 1]
    int grid = 0;
    int active_tokens = -1;                      // tokens the region decoder ran on; -1: none
    std::vector<std::string> warnings;           // e.g. a truncated instruction
    std::uint64_t seed = 0;
    int steps = 0;
    std::string backend;
};

struct BundleSummary {
    std::string path;
    std::string precision;    // "fp32" | "int8" | "fp16"
    std::string sparse_attn;  // "none" | "window" | "region"
    int image_size = 0;
    int max_length = 0;
    int default_steps = 0;
    bool has_region = false;
    std::vector<std::string> folders;  // every folder the bundle reads files from (itself; a sibling sharing its text encoder)
};

class Session {
public:
    explicit Session(const std::string& bundle_dir, const SessionOptions& options = {});
    ~Session();
    Session(Session&&) noexcept;
    Session& operator=(Session&&) noexcept;
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // Edit `image` as `instruction` says, inside `box` if given. Thread-safe (serialised).
    EditResult edit(const Image& image, const std::string& instruction,
                    const std::optional<Box>& box = std::nullopt, const EditOptions& options = {});

    BundleSummary bundle() const;
    std::string backend_name() const;
    double open_ms() const;  // backend start and graph loading

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

const char* version();

}  // namespace qk
