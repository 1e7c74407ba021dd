/* C smoke test of the unet-runtime C ABI, run by tests/c/smoke.sh (which the
 * Rust test `c_abi` calls): every entry point and every misuse the header
 * documents.
 *
 * Model: tests/data/color.onnx, whose single output is the logit R - G of
 * the input scaled to [0, 1] (see make_graphs.py), so the expected mask and
 * probabilities are known by hand: red pixels give sigmoid(1) = 0.7310586,
 * green ones sigmoid(-1) = 0.2689414.
 *
 * usage: smoke MODEL.onnx BACKEND(0 auto, 1 tract, 2 ort-cpu) */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet_runtime.h"

static int failures = 0;
static pthread_mutex_t failures_lock = PTHREAD_MUTEX_INITIALIZER;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            const char *e = unet_last_error();                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n",     \
                    __FILE__, __LINE__, #cond, e ? e : "(none)");            \
            pthread_mutex_lock(&failures_lock);                              \
            failures++;                                                      \
            pthread_mutex_unlock(&failures_lock);                            \
        }                                                                    \
    } while (0)

/* An argument error must come with a message. */
#define CHECK_INVALID(call)                                                  \
    do {                                                                     \
        CHECK((call) == UNET_STATUS_INVALID_ARGUMENT);                       \
        CHECK(unet_last_error() != NULL && unet_last_error()[0] != '\0');   \
    } while (0)

/* Frames: left half red, right half green; W even so YUV pairs and NV12
 * blocks never straddle the edge. STRIDE leaves padding after RGBA rows. */
enum { W = 8, H = 4, STRIDE = 4 * W + 4 };
static const float SIG1 = 0.7310586f, SIG_M1 = 0.2689414f;

/* Writes pixel (x, y) of the red/green frame in `format` into `buf`. */
static void put(unsigned char *buf, int format, int stride, int h, int x, int y) {
    int red = x < W / 2;
    unsigned char r = red ? 255 : 0, g = red ? 0 : 255;
    /* BT.601 limited range: red (81, 90, 240), green (145, 54, 34). */
    unsigned char Y = red ? 81 : 145, U = red ? 90 : 54, V = red ? 240 : 34;
    unsigned char *row = buf + y * stride;
    switch (format) {
    case UNET_PIXEL_FORMAT_RGB8: row[3 * x] = r; row[3 * x + 1] = g; row[3 * x + 2] = 0; break;
    case UNET_PIXEL_FORMAT_BGR8: row[3 * x] = 0; row[3 * x + 1] = g; row[3 * x + 2] = r; break;
    case UNET_PIXEL_FORMAT_RGBA8:
        row[4 * x] = r; row[4 * x + 1] = g; row[4 * x + 2] = 0; row[4 * x + 3] = 9; break;
    case UNET_PIXEL_FORMAT_BGRA8:
        row[4 * x] = 0; row[4 * x + 1] = g; row[4 * x + 2] = r; row[4 * x + 3] = 9; break;
    case UNET_PIXEL_FORMAT_YUYV:
        row[2 * x] = Y; row[4 * (x / 2) + 1] = U; row[4 * (x / 2) + 3] = V; break;
    case UNET_PIXEL_FORMAT_UYVY:
        row[2 * x + 1] = Y; row[4 * (x / 2)] = U; row[4 * (x / 2) + 2] = V; break;
    case UNET_PIXEL_FORMAT_NV12: {
        unsigned char *uv = buf + stride * h + (y / 2) * stride + 2 * (x / 2);
        row[x] = Y; uv[0] = U; uv[1] = V; break;
    }
    }
}

/* Segments the red/green frame given in `format`; checks the mask (and the
 * probabilities within `tol`). */
static void check_format(UnetSegmenter *seg, int format, float tol) {
    unsigned char buf[STRIDE * H * 3 / 2];
    memset(buf, 0xAB, sizeof buf); /* padding holds garbage */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) put(buf, format, STRIDE, H, x, y);
    unsigned char mask[W * H];
    float probs[W * H];
    memset(mask, 7, sizeof mask);
    UnetStatus st = unet_segmenter_segment(seg, buf, sizeof buf, W, H, STRIDE, format, mask,
                                           sizeof mask, probs, W * H);
    CHECK(st == UNET_STATUS_OK);
    if (st != UNET_STATUS_OK) {
        fprintf(stderr, "  (pixel format %d)\n", format);
        return;
    }
    int bad = 0;
    for (int i = 0; i < W * H; i++) {
        int red = (i % W) < W / 2;
        bad += mask[i] != (red ? 1 : 0);
        bad += fabsf(probs[i] - (red ? SIG1 : SIG_M1)) > tol;
    }
    if (bad) fprintf(stderr, "  pixel format %d: %d wrong value(s)\n", format, bad);
    CHECK(bad == 0);
}

/* One handle shared by several threads, frames of mixed sizes: every call
 * must return its own frame's mask. */
enum { THREADS = 4, CALLS = 50 };
static void *worker(void *arg) {
    UnetSegmenter *seg = (UnetSegmenter *)arg;
    static const int sizes[3][2] = {{8, 4}, {12, 6}, {6, 10}};
    unsigned char buf[3 * 12 * 10], mask[12 * 10];
    for (int i = 0; i < CALLS; i++) {
        int w = sizes[i % 3][0], h = sizes[i % 3][1];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                unsigned char *p = buf + 3 * (y * w + x);
                p[0] = x < w / 2 ? 255 : 0; p[1] = x < w / 2 ? 0 : 255; p[2] = 0;
            }
        UnetStatus st = unet_segmenter_segment(seg, buf, sizeof buf, w, h, 3 * w,
                                               UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, NULL, 0);
        CHECK(st == UNET_STATUS_OK);
        for (int j = 0; j < w * h && st == UNET_STATUS_OK; j++) {
            if (mask[j] != ((j % w) < w / 2)) {
                CHECK(!"a shared handle returned another frame's mask");
                break;
            }
        }
    }
    return NULL;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = n > 0 ? malloc((size_t)n) : NULL;
    if (data && fread(data, 1, (size_t)n, f) != (size_t)n) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return data;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: smoke MODEL.onnx BACKEND\n");
        return 2;
    }
    UnetBackend backend = atoi(argv[2]);

    /* Errors are values with a message, never a crash. */
    UnetSegmenter *seg = (UnetSegmenter *)0x1;
    UnetStatus st = unet_segmenter_create("/nonexistent/model.onnx", backend, &seg);
    CHECK(st == UNET_STATUS_IO);
    CHECK(seg == NULL);
    CHECK(unet_last_error() != NULL && strstr(unet_last_error(), "nonexistent") != NULL);
    CHECK_INVALID(unet_segmenter_create(NULL, backend, &seg));
    CHECK_INVALID(unet_segmenter_create(argv[1], backend, NULL));
    /* Out-of-range enums from C are refused, not trusted. */
    CHECK_INVALID(unet_segmenter_create(argv[1], 99, &seg));
    CHECK_INVALID(unet_segmenter_create(argv[1], -1, &seg));
    CHECK(seg == NULL);

    /* Options: defaults, then each documented misuse. */
    UnetOptions options = unet_options_default();
    CHECK(options.struct_size == sizeof(UnetOptions));
    CHECK(options.threads == 2 && options.threshold < 0.0f && options.tile == 0);
    CHECK(options.fit == UNET_FIT_MODEL && options.require_backend == 0);
    options.backend = backend;
    UnetOptions bad;
    bad = options; bad.struct_size = 0;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.struct_size = UNET_OPTIONS_MIN_SIZE - 4;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.threads = 100000;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    CHECK(strstr(unet_last_error(), "threads") != NULL);
    bad = options; bad.threads = 0;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.fit = 7;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.threshold = 2.0f;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.threshold = NAN;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.fp16 = 2;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    bad = options; bad.backend = UNET_BACKEND_AUTO; bad.require_backend = 1;
    CHECK_INVALID(unet_segmenter_create_with(argv[1], &bad, &seg));
    CHECK_INVALID(unet_segmenter_create_with(argv[1], NULL, &seg));
    CHECK(seg == NULL);

    /* A caller compiled against the smallest struct: the fields after it
     * are not read (garbage there is ignored) and take their defaults. */
    bad = options; bad.struct_size = UNET_OPTIONS_MIN_SIZE; bad.fit = 12345;
    bad.require_backend = 77;
    st = unet_segmenter_create_with(argv[1], &bad, &seg);
    CHECK(st == UNET_STATUS_OK);
    CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);

    options.require_backend = backend != UNET_BACKEND_AUTO;
    st = unet_segmenter_create_with(argv[1], &options, &seg);
    CHECK(st == UNET_STATUS_OK);
    if (st != UNET_STATUS_OK) return 1;

    /* Queries. */
    const char *provider = NULL;
    CHECK(unet_segmenter_provider(seg, &provider) == UNET_STATUS_OK && provider != NULL);
    char name[64] = "?";
    if (provider) snprintf(name, sizeof name, "%s", provider);
    size_t classes = 0;
    CHECK(unet_segmenter_classes(seg, &classes) == UNET_STATUS_OK && classes == 1);
    const char *class_name = NULL;
    CHECK(unet_segmenter_class_name(seg, 0, &class_name) == UNET_STATUS_OK);
    CHECK(class_name != NULL && strcmp(class_name, "foreground") == 0);
    CHECK_INVALID(unet_segmenter_class_name(seg, 1, &class_name));
    float threshold = 0.0f;
    CHECK(unet_segmenter_threshold(seg, &threshold) == UNET_STATUS_OK && threshold == 0.5f);
    size_t in_w = 9, in_h = 9, in_c = 0;
    CHECK(unet_segmenter_input_size(seg, &in_w, &in_h, &in_c) == UNET_STATUS_OK);
    CHECK(in_c == 3 && in_w == 0 && in_h == 0); /* color.onnx records no training size */
    CHECK_INVALID(unet_segmenter_classes(seg, NULL));
    CHECK_INVALID(unet_segmenter_classes(NULL, &classes));
    CHECK_INVALID(unet_segmenter_threshold(seg, NULL));
    CHECK_INVALID(unet_segmenter_input_size(seg, &in_w, NULL, &in_c));
    CHECK_INVALID(unet_segmenter_provider(NULL, &provider));

    /* Warm-up for the frame size, then every pixel format. */
    CHECK(unet_segmenter_warmup(seg, W, H) == UNET_STATUS_OK);
    CHECK(unet_segmenter_warmup(seg, 0, H) == UNET_STATUS_INVALID_INPUT);
    CHECK_INVALID(unet_segmenter_warmup(NULL, W, H));
    check_format(seg, UNET_PIXEL_FORMAT_RGB8, 1e-5f);
    check_format(seg, UNET_PIXEL_FORMAT_BGR8, 1e-5f);
    check_format(seg, UNET_PIXEL_FORMAT_RGBA8, 1e-5f);
    check_format(seg, UNET_PIXEL_FORMAT_BGRA8, 1e-5f);
    /* YUV is 8-bit: red comes back as (254, 0, 0). */
    check_format(seg, UNET_PIXEL_FORMAT_YUYV, 2e-3f);
    check_format(seg, UNET_PIXEL_FORMAT_UYVY, 2e-3f);
    check_format(seg, UNET_PIXEL_FORMAT_NV12, 2e-3f);

    /* Bad input: unknown format, frames larger than their buffer, wrong
     * channel count, zero size, short outputs, bad stride, odd YUV width. */
    unsigned char small[64 * 64 * 3];
    memset(small, 0, sizeof small);
    unsigned char mask[72 * 72];
    float probs[W * H];
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W, 99, mask,
                                         sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W, -1, mask,
                                         sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, 72, 72, 3 * 72,
                                         UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, 6000, 6000, 3 * 6000,
                                         UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, 64, 64, 4 * 64,
                                         UNET_PIXEL_FORMAT_RGBA8, mask, sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, 64 * 64 * 3 / 2 - 1, 64, 64, 64,
                                         UNET_PIXEL_FORMAT_NV12, mask, sizeof mask, NULL, 0));
    CHECK(unet_segmenter_segment(seg, small, sizeof small, 64, 64, 64, UNET_PIXEL_FORMAT_NV12,
                                 mask, sizeof mask, NULL, 0) == UNET_STATUS_OK);
    CHECK(unet_segmenter_segment(seg, small, sizeof small, W, H, W, UNET_PIXEL_FORMAT_GRAY8,
                                 mask, sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(seg, small, sizeof small, 0, H, 3 * W, UNET_PIXEL_FORMAT_RGB8,
                                 mask, sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(seg, small, sizeof small, 5, 2, 16, UNET_PIXEL_FORMAT_YUYV,
                                 mask, sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W - 1,
                                 UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, NULL, 0) ==
          UNET_STATUS_INVALID_INPUT);
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W,
                                         UNET_PIXEL_FORMAT_RGB8, mask, W * H - 1, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W,
                                         UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, probs, 3));
    CHECK_INVALID(unet_segmenter_segment(NULL, small, sizeof small, W, H, 3 * W,
                                         UNET_PIXEL_FORMAT_RGB8, mask, sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, NULL, 0, W, H, 3 * W, UNET_PIXEL_FORMAT_RGB8,
                                         mask, sizeof mask, NULL, 0));
    CHECK_INVALID(unet_segmenter_segment(seg, small, sizeof small, W, H, 3 * W,
                                         UNET_PIXEL_FORMAT_RGB8, NULL, 0, NULL, 0));

    /* One handle, several threads, mixed frame sizes. */
    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) CHECK(pthread_create(&threads[t], NULL, worker, seg) == 0);
    for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);

    /* Destroy nulls the pointer; destroying null is a no-op. */
    CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);
    CHECK(seg == NULL);
    CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);
    CHECK(unet_segmenter_destroy(NULL) == UNET_STATUS_OK);

    /* The same model from memory (tract only: ONNX Runtime loads by path);
       the buffer may go once create returns. */
    UnetOptions memory_options = options;
    memory_options.backend = UNET_BACKEND_TRACT;
    size_t len = 0;
    unsigned char *model = read_file(argv[1], &len);
    CHECK(model != NULL);
    if (model) {
        st = unet_segmenter_create_from_memory(model, len, &memory_options, &seg);
        CHECK(st == UNET_STATUS_OK);
        memset(model, 0, len);
        free(model);
        if (st == UNET_STATUS_OK) {
            check_format(seg, UNET_PIXEL_FORMAT_RGB8, 1e-5f);
            CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);
        }
    }
    unsigned char junk[64];
    memset(junk, 0x5A, sizeof junk);
    CHECK(unet_segmenter_create_from_memory(junk, sizeof junk, &memory_options, &seg) ==
          UNET_STATUS_INVALID_MODEL);
    CHECK(seg == NULL);
    CHECK_INVALID(unet_segmenter_create_from_memory(NULL, 10, &options, &seg));
    CHECK_INVALID(unet_segmenter_create_from_memory(junk, 0, &options, &seg));
    CHECK_INVALID(unet_segmenter_create_from_memory(junk, sizeof junk, NULL, &seg));

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("smoke ok (%s, unet-runtime %s)\n", name, unet_version());
    return 0;
}
