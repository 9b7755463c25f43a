/* The query-kontext runtime's C API: open a bundle, edit images, read the result, free.
 *
 *     qk_session* s = NULL;
 *     if (qk_session_open("engines/default/int8", NULL, &s) != QK_OK) {
 *         fprintf(stderr, "%s\n", qk_last_error());
 *         return 1;
 *     }
 *     int32_t box[4] = {8, 8, 24, 24};
 *     qk_edit_options opt;
 *     qk_edit_options_init(&opt);
 *     opt.seed = 7;
 *     qk_result* r = NULL;
 *     if (qk_edit(s, rgb, width, height, "make the red circle blue", box, &opt, &r) == QK_OK) {
 *         const uint8_t* out = qk_result_rgb(r);   (width x height x 3, like the input)
 *         ...
 *         qk_result_free(r);
 *     }
 *     qk_session_free(s);
 *
 * Errors: every function returns a qk_status; on anything but QK_OK, qk_last_error() gives a
 * message naming the value, what is allowed and the fix. No function throws or aborts. The
 * message lives in thread-local storage until the next failing call on the same thread.
 * Pointers: a NULL where a value is required is QK_ERROR_INPUT. Strings are UTF-8.
 * Threads: a session may be shared; its edits run one at a time. Open one session per thread
 * for parallel edits.
 */
#ifndef QK_QK_H
#define QK_QK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qk_status {
    QK_OK = 0,
    QK_ERROR_INPUT = 1,          /* an image, box, instruction, option or NULL pointer refused */
    QK_ERROR_BUNDLE = 2,         /* a bundle folder missing, incomplete, corrupt or of another format */
    QK_ERROR_BACKEND = 3,        /* a backend that cannot run here, or failed while running */
    QK_ERROR_OUT_OF_MEMORY = 4,
    QK_ERROR_INTERNAL = 5        /* a bug: please report it with the message */
} qk_status;

typedef enum qk_sparse {
    QK_SPARSE_AUTO = 0,          /* "region" when the bundle has the region decoder, else "none" */
    QK_SPARSE_NONE = 1,
    QK_SPARSE_REGION = 2
} qk_sparse;

typedef struct qk_session qk_session;
typedef struct qk_result qk_result;

typedef struct qk_open_options {
    uint32_t struct_size;        /* sizeof(qk_open_options), set by qk_open_options_init */
    const char* backend;         /* "ort-cpu" (default, NULL) or "tensorrt" (when built with it) */
    int32_t threads;             /* ONNX Runtime intra-op threads; 0: its default (one per core) */
    int32_t verify;              /* check each file's sha256 against the manifest (default 1) */
    const char* engine_dir;      /* TensorRT engines folder written by qk-build (tensorrt only) */
} qk_open_options;

typedef struct qk_edit_options {
    uint32_t struct_size;        /* sizeof(qk_edit_options), set by qk_edit_options_init */
    int32_t steps;               /* 0: the bundle's default; else 1..1000 */
    double text_guidance;        /* NaN: the bundle's default */
    double image_guidance;       /* NaN: the bundle's default */
    uint64_t seed;               /* the portable noise's seed (same image as the Python runtime) */
    int32_t sparse;              /* a qk_sparse */
} qk_edit_options;

/* The library's version, e.g. "0.1.0". */
const char* qk_version(void);
/* The message of the last failing call on this thread ("" if none). Never NULL. */
const char* qk_last_error(void);

void qk_open_options_init(qk_open_options* options);
void qk_edit_options_init(qk_edit_options* options);

/* Open a bundle folder (reads manifest.json, checks the hashes, loads the graphs).
 * options may be NULL (defaults). On success *out is a session to free with qk_session_free. */
qk_status qk_session_open(const char* bundle_dir, const qk_open_options* options, qk_session** out);
/* Free a session (NULL is fine). */
void qk_session_free(qk_session* session);

/* Edit an RGB image (width x height x 3 bytes, row-major, no padding) as instruction says,
 * inside box = {x0, y0, x1, y1} (input pixels, x1/y1 exclusive; NULL: no box).
 * options may be NULL. On success *out holds the edited image, the input's size. */
qk_status qk_edit(qk_session* session, const uint8_t* rgb, int32_t width, int32_t height,
                  const char* instruction, const int32_t* box, const qk_edit_options* options,
                  qk_result** out);
/* The same, reading a PNG file. */
qk_status qk_edit_png(qk_session* session, const char* image_path, const char* instruction,
                      const int32_t* box, const qk_edit_options* options, qk_result** out);

/* The result: pixels (owned by the result), size, milliseconds per stage. */
const uint8_t* qk_result_rgb(const qk_result* result);
int32_t qk_result_width(const qk_result* result);
int32_t qk_result_height(const qk_result* result);
/* Stage names: "preprocess", "image_encoder", "text_encoder", "gateway", "cmg", "decoder",
 * "image_decoder", "postprocess", "total"; "decoder_cond" (bundle format 3 on) and
 * "source_decoder" (compositing "changed", format 4). Returns -1 for an unknown name or a NULL argument. */
double qk_result_timing_ms(const qk_result* result, const char* stage);
/* Write the result as an 8-bit RGB PNG (written to a temporary name, then renamed). */
qk_status qk_result_save_png(const qk_result* result, const char* path);
void qk_result_free(qk_result* result);

/* Read a PNG as 8-bit RGB, with the Python runtime's rules (alpha over white, 16-bit scaled).
 * *rgb is allocated by the library: free it with qk_buffer_free. */
qk_status qk_load_png(const char* path, uint8_t** rgb, int32_t* width, int32_t* height);
void qk_buffer_free(void* buffer);

#ifdef __cplusplus
}
#endif
#endif /* QK_QK_H */
