/* Bad input through the C API: each case must return the expected status and a message, and
 * nothing may crash. Also one good edit, so the happy path is exercised under the sanitizer too.
 *
 *   qk_c_api_test BUNDLE GOOD.png NOT_A.png TRUNCATED.png TAMPERED_BUNDLE OUT_DIR
 *
 * Prints one line per case: "ok|FAIL <case> <status> <message>"; exits 0 when every case passed.
 * Written in C99 so that it also proves qk.h is usable from C.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qk/qk.h"

static int failures = 0;

static void expect(const char* name, qk_status got, qk_status want) {
    const char* msg = got == QK_OK ? "" : qk_last_error();
    int ok = got == want && (got == QK_OK || (msg != NULL && msg[0] != '\0'));
    if (!ok) failures++;
    printf("%s %s %d %s\n", ok ? "ok" : "FAIL", name, (int)got, msg ? msg : "(null message)");
}

int main(int argc, char** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s BUNDLE GOOD.png NOT_A.png TRUNCATED.png TAMPERED_BUNDLE OUT_DIR\n", argv[0]);
        return 2;
    }
    const char *bundle = argv[1], *good = argv[2], *not_png = argv[3], *truncated = argv[4], *tampered = argv[5],
               *outdir = argv[6];
    qk_session* s = NULL;
    qk_result* r = NULL;
    qk_open_options oo;
    qk_edit_options eo;
    char path[4096];

    /* -- opening */
    expect("open_null_dir", qk_session_open(NULL, NULL, &s), QK_ERROR_INPUT);
    expect("open_null_out", qk_session_open(bundle, NULL, NULL), QK_ERROR_INPUT);
    expect("open_missing_bundle", qk_session_open("/nonexistent/qk/bundle", NULL, &s), QK_ERROR_BUNDLE);
    expect("open_not_a_bundle", qk_session_open(outdir, NULL, &s), QK_ERROR_BUNDLE);
    expect("open_tampered_bundle", qk_session_open(tampered, NULL, &s), QK_ERROR_BUNDLE);
    qk_open_options_init(&oo);
    oo.backend = "no-such-backend";
    expect("open_unknown_backend", qk_session_open(bundle, &oo, &s), QK_ERROR_BACKEND);
    oo.backend = "tensorrt";
    oo.engine_dir = "/nonexistent/engines";
    expect("open_tensorrt", qk_session_open(bundle, &oo, &s), QK_ERROR_BACKEND);
    qk_open_options_init(&oo);
    oo.struct_size = 3;
    expect("open_bad_struct_size", qk_session_open(bundle, &oo, &s), QK_ERROR_INPUT);
    qk_open_options_init(&oo);
    oo.threads = 1;
    expect("open_good", qk_session_open(bundle, &oo, &s), QK_OK);
    if (!s) {
        printf("FAIL cannot continue without a session\n");
        return 1;
    }

    /* -- images */
    uint8_t* rgb = NULL;
    int32_t w = 0, h = 0;
    expect("load_png_null_path", qk_load_png(NULL, &rgb, &w, &h), QK_ERROR_INPUT);
    expect("load_png_null_out", qk_load_png(good, NULL, &w, &h), QK_ERROR_INPUT);
    expect("load_png_missing", qk_load_png("/nonexistent/x.png", &rgb, &w, &h), QK_ERROR_INPUT);
    expect("load_png_not_png", qk_load_png(not_png, &rgb, &w, &h), QK_ERROR_INPUT);
    expect("load_png_truncated", qk_load_png(truncated, &rgb, &w, &h), QK_ERROR_INPUT);
    expect("load_png_good", qk_load_png(good, &rgb, &w, &h), QK_OK);
    if (!rgb) {
        printf("FAIL cannot continue without an image\n");
        return 1;
    }

    /* -- edits with bad input */
    int32_t box[4] = {2, 2, w - 2, h - 2};
    int32_t inverted[4] = {10, 10, 5, 20};
    int32_t outside[4] = {0, 0, w + 1, h};
    int32_t negative[4] = {-1, 0, 4, 4};
    int32_t empty_box[4] = {3, 3, 3, 9};
    qk_edit_options_init(&eo);
    eo.steps = 2;
    expect("edit_null_session", qk_edit(NULL, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_null_rgb", qk_edit(s, NULL, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_null_instruction", qk_edit(s, rgb, w, h, NULL, box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_null_out", qk_edit(s, rgb, w, h, "make it blue", box, &eo, NULL), QK_ERROR_INPUT);
    expect("edit_empty_instruction", qk_edit(s, rgb, w, h, "", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_blank_instruction", qk_edit(s, rgb, w, h, " \t\n ", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_bad_utf8", qk_edit(s, rgb, w, h, "make it \xff\xfe blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_zero_width", qk_edit(s, rgb, 0, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_negative_height", qk_edit(s, rgb, w, -4, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_huge_image", qk_edit(s, rgb, 100000, 100000, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    expect("edit_box_inverted", qk_edit(s, rgb, w, h, "make it blue", inverted, &eo, &r), QK_ERROR_INPUT);
    expect("edit_box_outside", qk_edit(s, rgb, w, h, "make it blue", outside, &eo, &r), QK_ERROR_INPUT);
    expect("edit_box_negative", qk_edit(s, rgb, w, h, "make it blue", negative, &eo, &r), QK_ERROR_INPUT);
    expect("edit_box_empty", qk_edit(s, rgb, w, h, "make it blue", empty_box, &eo, &r), QK_ERROR_INPUT);
    eo.steps = 5000;
    expect("edit_steps_too_many", qk_edit(s, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    eo.steps = -1;
    expect("edit_steps_negative", qk_edit(s, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    qk_edit_options_init(&eo);
    eo.text_guidance = INFINITY;
    expect("edit_guidance_inf", qk_edit(s, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    qk_edit_options_init(&eo);
    eo.sparse = 7;
    expect("edit_sparse_unknown", qk_edit(s, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    qk_edit_options_init(&eo);
    eo.struct_size = 0;
    expect("edit_bad_struct_size", qk_edit(s, rgb, w, h, "make it blue", box, &eo, &r), QK_ERROR_INPUT);
    qk_edit_options_init(&eo);
    eo.steps = 2;
    expect("edit_png_missing", qk_edit_png(s, "/nonexistent/x.png", "make it blue", NULL, &eo, &r), QK_ERROR_INPUT);
    expect("edit_png_not_png", qk_edit_png(s, not_png, "make it blue", NULL, &eo, &r), QK_ERROR_INPUT);
    expect("edit_png_truncated", qk_edit_png(s, truncated, "make it blue", NULL, &eo, &r), QK_ERROR_INPUT);
    expect("edit_png_null_path", qk_edit_png(s, NULL, "make it blue", NULL, &eo, &r), QK_ERROR_INPUT);

    /* -- good edits; the session still works after all of the above */
    expect("edit_good", qk_edit(s, rgb, w, h, "make the red circle blue", box, &eo, &r), QK_OK);
    if (r) {
        int size_ok = qk_result_width(r) == w && qk_result_height(r) == h && qk_result_rgb(r) != NULL;
        int timing_ok = qk_result_timing_ms(r, "total") >= 0.0 && qk_result_timing_ms(r, "no-such-stage") == -1.0 &&
                        qk_result_timing_ms(r, NULL) == -1.0;
        expect("result_size", size_ok ? QK_OK : QK_ERROR_INTERNAL, QK_OK);
        expect("result_timings", timing_ok ? QK_OK : QK_ERROR_INTERNAL, QK_OK);
        snprintf(path, sizeof path, "%s/c_api_out.png", outdir);
        expect("result_save", qk_result_save_png(r, path), QK_OK);
        expect("result_save_bad_dir", qk_result_save_png(r, "/proc/qk-no-such-dir/out.png"), QK_ERROR_INPUT);
        expect("result_save_null_path", qk_result_save_png(r, NULL), QK_ERROR_INPUT);
        qk_result_free(r);
        r = NULL;
    }
    expect("edit_png_good", qk_edit_png(s, good, "remove the square", NULL, &eo, &r), QK_OK);
    qk_result_free(r);
    expect("edit_resized_input", qk_edit(s, rgb, w / 2 > 0 ? w / 2 : 1, h, "make it blue", NULL, &eo, &r), QK_OK);
    qk_result_free(r);

    qk_buffer_free(rgb);
    qk_result_free(NULL);
    qk_session_free(s);
    qk_session_free(NULL);
    expect("version", qk_version() && qk_version()[0] ? QK_OK : QK_ERROR_INTERNAL, QK_OK);
    printf("%d failed\n", failures);
    return failures ? 1 : 0;
}
