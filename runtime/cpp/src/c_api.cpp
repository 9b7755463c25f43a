// The C API over the C++ one: every exception becomes a status code plus a thread-local message
// (qk_last_error); nothing throws across the boundary and nothing aborts.
#include "qk/qk.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>

#include "qk/qk.hpp"

struct qk_session {
    qk::Session session;
};

struct qk_result {
    qk::EditResult result;
};

namespace {

thread_local std::string g_last_error;

qk_status fail(qk_status code, const std::string& message) {
    try {
        g_last_error = message;
    } catch (...) {
    }
    return code;
}

// Run `body`, mapping each exception to its status and message.
template <typename F>
qk_status guarded(F&& body) {
    try {
        body();
        return QK_OK;
    } catch (const qk::Error& e) {
        return fail(static_cast<qk_status>(e.code()), e.what());
    } catch (const std::bad_alloc&) {
        return fail(QK_ERROR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception& e) {
        return fail(QK_ERROR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(QK_ERROR_INTERNAL, "internal error: unknown exception");
    }
}

qk_status null_arg(const char* function, const char* name) {
    return fail(QK_ERROR_INPUT, std::string(function) + ": " + name + " is NULL; pass a valid pointer");
}

qk::EditOptions edit_options(const qk_edit_options* o) {
    qk::EditOptions e;
    if (!o) return e;
    if (o->struct_size < sizeof(qk_edit_options))
        throw qk::InputError("qk_edit_options.struct_size is " + std::to_string(o->struct_size) + ", expected " +
                             std::to_string(sizeof(qk_edit_options)) + "; initialise it with qk_edit_options_init");
    if (o->steps < 0 || o->steps > 1000)
        throw qk::InputError("steps=" + std::to_string(o->steps) + "; must be 0 (the bundle's default) or 1 to 1000");
    e.steps = o->steps;
    if (!std::isnan(o->text_guidance)) e.text_guidance = o->text_guidance;
    if (!std::isnan(o->image_guidance)) e.image_guidance = o->image_guidance;
    e.seed = o->seed;
    switch (o->sparse) {
        case QK_SPARSE_AUTO: e.sparse = qk::Sparse::Auto; break;
        case QK_SPARSE_NONE: e.sparse = qk::Sparse::None; break;
        case QK_SPARSE_REGION: e.sparse = qk::Sparse::Region; break;
        default:
            throw qk::InputError("sparse=" + std::to_string(o->sparse) +
                                 "; choose QK_SPARSE_AUTO (0), QK_SPARSE_NONE (1) or QK_SPARSE_REGION (2)");
    }
    return e;
}

std::optional<qk::Box> box_of(const int32_t* box) {
    if (!box) return std::nullopt;
    return qk::Box{box[0], box[1], box[2], box[3]};
}

qk_status edit_image(qk_session* session, const qk::Image& image, const char* instruction, const int32_t* box,
                     const qk_edit_options* options, qk_result** out) {
    qk::EditOptions opts = edit_options(options);
    auto r = std::make_unique<qk_result>();
    r->result = session->session.edit(image, instruction, box_of(box), opts);
    *out = r.release();
    return QK_OK;
}

}  // namespace

extern "C" {

const char* qk_version(void) { return qk::version(); }

const char* qk_last_error(void) { return g_last_error.c_str(); }

void qk_open_options_init(qk_open_options* o) {
    if (!o) return;
    std::memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->verify = 1;
}

void qk_edit_options_init(qk_edit_options* o) {
    if (!o) return;
    std::memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->text_guidance = NAN;
    o->image_guidance = NAN;
    o->sparse = QK_SPARSE_AUTO;
}

qk_status qk_session_open(const char* bundle_dir, const qk_open_options* options, qk_session** out) {
    if (!out) return null_arg("qk_session_open", "out");
    *out = nullptr;
    if (!bundle_dir) return null_arg("qk_session_open", "bundle_dir");
    return guarded([&] {
        qk::SessionOptions so;
        if (options) {
            if (options->struct_size < sizeof(qk_open_options))
                throw qk::InputError("qk_open_options.struct_size is " + std::to_string(options->struct_size) +
                                     ", expected " + std::to_string(sizeof(qk_open_options)) +
                                     "; initialise it with qk_open_options_init");
            if (options->backend) so.backend = options->backend;
            if (options->threads < 0) throw qk::InputError("threads=" + std::to_string(options->threads) + "; must be >= 0");
            so.threads = options->threads;
            so.verify = options->verify != 0;
            if (options->engine_dir) so.engine_dir = options->engine_dir;
        }
        *out = new qk_session{qk::Session(bundle_dir, so)};
    });
}

void qk_session_free(qk_session* session) { delete session; }

qk_status qk_edit(qk_session* session, const uint8_t* rgb, int32_t width, int32_t height, const char* instruction,
                  const int32_t* box, const qk_edit_options* options, qk_result** out) {
    if (!out) return null_arg("qk_edit", "out");
    *out = nullptr;
    if (!session) return null_arg("qk_edit", "session");
    if (!rgb) return null_arg("qk_edit", "rgb");
    if (!instruction) return null_arg("qk_edit", "instruction");
    if (width < 1 || height < 1 || static_cast<long long>(width) * height > 64LL * 1024 * 1024)
        return fail(QK_ERROR_INPUT, "qk_edit: image size " + std::to_string(width) + "x" + std::to_string(height) +
                                        " is empty or over the 64-megapixel limit");
    return guarded([&] {
        qk::Image image;
        image.width = width;
        image.height = height;
        image.rgb.assign(rgb, rgb + static_cast<std::size_t>(width) * height * 3);
        edit_image(session, image, instruction, box, options, out);
    });
}

qk_status qk_edit_png(qk_session* session, const char* image_path, const char* instruction, const int32_t* box,
                      const qk_edit_options* options, qk_result** out) {
    if (!out) return null_arg("qk_edit_png", "out");
    *out = nullptr;
    if (!session) return null_arg("qk_edit_png", "session");
    if (!image_path) return null_arg("qk_edit_png", "image_path");
    if (!instruction) return null_arg("qk_edit_png", "instruction");
    return guarded([&] { edit_image(session, qk::load_png(image_path), instruction, box, options, out); });
}

const uint8_t* qk_result_rgb(const qk_result* r) { return r ? r->result.image.rgb.data() : nullptr; }
int32_t qk_result_width(const qk_result* r) { return r ? r->result.image.width : 0; }
int32_t qk_result_height(const qk_result* r) { return r ? r->result.image.height : 0; }

double qk_result_timing_ms(const qk_result* r, const char* stage) {
    if (!r || !stage) return -1.0;
    auto it = r->result.timings.find(stage);
    return it == r->result.timings.end() ? -1.0 : it->second;
}

qk_status qk_result_save_png(const qk_result* r, const char* path) {
    if (!r) return null_arg("qk_result_save_png", "result");
    if (!path) return null_arg("qk_result_save_png", "path");
    return guarded([&] { qk::save_png(path, r->result.image); });
}

void qk_result_free(qk_result* r) { delete r; }

qk_status qk_load_png(const char* path, uint8_t** rgb, int32_t* width, int32_t* height) {
    if (!rgb) return null_arg("qk_load_png", "rgb");
    *rgb = nullptr;
    if (!path) return null_arg("qk_load_png", "path");
    if (!width) return null_arg("qk_load_png", "width");
    if (!height) return null_arg("qk_load_png", "height");
    return guarded([&] {
        qk::Image img = qk::load_png(path);
        auto* buf = static_cast<uint8_t*>(std::malloc(img.rgb.size()));
        if (!buf) throw std::bad_alloc();
        std::memcpy(buf, img.rgb.data(), img.rgb.size());
        *rgb = buf;
        *width = img.width;
        *height = img.height;
    });
}

void qk_buffer_free(void* buffer) { std::free(buffer); }

}  // extern "C"
