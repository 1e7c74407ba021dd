/* C smoke test of the unet-runtime C ABI, run by the Rust test `c_abi`.
 *
 * Model: tests/data/color.onnx, whose single output is the logit R - G of
 * the input scaled to [0, 1] (see make_graphs.py), so the expected mask and
 * probabilities are known by hand: red pixels give sigmoid(1) = 0.7310586,
 * green ones sigmoid(-1) = 0.2689414.
 *
 * usage: smoke MODEL.onnx BACKEND(0 auto, 1 tract, 2 ort-cpu) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unet_runtime.h"

static int failures = 0;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            const char *e = unet_last_error();                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n",     \
                    __FILE__, __LINE__, #cond, e ? e : "(none)");            \
            failures++;                                                      \
        }                                                                    \
    } while (0)

enum { W = 6, H = 4, STRIDE = 20 }; /* 18 bytes of pixels + 2 of row padding */

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: smoke MODEL.onnx BACKEND\n");
        return 2;
    }
    UnetBackend backend = (UnetBackend)atoi(argv[2]);

    /* Errors are values with a message, never a crash. */
    UnetSegmenter *seg = (UnetSegmenter *)0x1;
    UnetStatus st = unet_segmenter_create("/nonexistent/model.onnx", backend, &seg);
    CHECK(st == UNET_STATUS_IO);
    CHECK(seg == NULL);
    CHECK(unet_last_error() != NULL && strstr(unet_last_error(), "nonexistent") != NULL);
    CHECK(unet_segmenter_create(NULL, backend, &seg) == UNET_STATUS_INVALID_ARGUMENT);

    UnetOptions options = unet_options_default();
    CHECK(options.threads == 2 && options.threshold < 0.0f);
    options.backend = backend;
    st = unet_segmenter_create_with(argv[1], &options, &seg);
    CHECK(st == UNET_STATUS_OK);
    if (st != UNET_STATUS_OK) return 1;

    const char *provider = NULL;
    CHECK(unet_segmenter_provider(seg, &provider) == UNET_STATUS_OK && provider != NULL);
    char name[64] = "?";
    if (provider) snprintf(name, sizeof name, "%s", provider);
    size_t classes = 0;
    CHECK(unet_segmenter_classes(seg, &classes) == UNET_STATUS_OK && classes == 1);

    /* Left half red, right half green; padding bytes hold garbage. */
    unsigned char rgb[STRIDE * H], bgr[STRIDE * H];
    memset(rgb, 0xAB, sizeof rgb);
    memset(bgr, 0xAB, sizeof bgr);
    for (int y = 0; y < H; y++) {
        for (int x = 0; x < W; x++) {
            unsigned char r = x < W / 2 ? 255 : 0, g = x < W / 2 ? 0 : 255;
            unsigned char *p = rgb + y * STRIDE + 3 * x, *q = bgr + y * STRIDE + 3 * x;
            p[0] = r; p[1] = g; p[2] = 0;
            q[0] = 0; q[1] = g; q[2] = r;
        }
    }
    unsigned char mask[W * H];
    float probs[W * H];
    const UnetPixelFormat formats[2] = {UNET_PIXEL_FORMAT_RGB8, UNET_PIXEL_FORMAT_BGR8};
    const unsigned char *buffers[2] = {rgb, bgr};
    for (int f = 0; f < 2; f++) {
        memset(mask, 7, sizeof mask);
        st = unet_segmenter_segment(seg, buffers[f], W, H, STRIDE, formats[f], mask,
                                    sizeof mask, probs, W * H);
        CHECK(st == UNET_STATUS_OK);
        for (int i = 0; i < W * H; i++) {
            int red = (i % W) < W / 2;
            CHECK(mask[i] == (red ? 1 : 0));
            CHECK(fabsf(probs[i] - (red ? 0.7310586f : 0.2689414f)) < 1e-5f);
        }
    }
    /* The mask alone (probabilities pointer null). */
    CHECK(unet_segmenter_segment(seg, rgb, W, H, STRIDE, UNET_PIXEL_FORMAT_RGB8, mask,
                                 sizeof mask, NULL, 0) == UNET_STATUS_OK);
    CHECK(mask[0] == 1 && mask[W - 1] == 0);

    /* Bad input: wrong channel count, zero size, short buffers, bad stride. */
    CHECK(unet_segmenter_segment(seg, rgb, W, H, STRIDE, UNET_PIXEL_FORMAT_GRAY8, mask,
                                 sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(seg, rgb, 0, H, STRIDE, UNET_PIXEL_FORMAT_RGB8, mask,
                                 sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(seg, rgb, W, H, STRIDE, UNET_PIXEL_FORMAT_RGB8, mask,
                                 W * H - 1, NULL, 0) == UNET_STATUS_INVALID_ARGUMENT);
    CHECK(unet_segmenter_segment(seg, rgb, W, H, STRIDE, UNET_PIXEL_FORMAT_RGB8, mask,
                                 sizeof mask, probs, 3) == UNET_STATUS_INVALID_ARGUMENT);
    CHECK(unet_segmenter_segment(seg, rgb, W, H, 3 * W - 1, UNET_PIXEL_FORMAT_RGB8, mask,
                                 sizeof mask, NULL, 0) == UNET_STATUS_INVALID_INPUT);
    CHECK(unet_segmenter_segment(NULL, rgb, W, H, STRIDE, UNET_PIXEL_FORMAT_RGB8, mask,
                                 sizeof mask, NULL, 0) == UNET_STATUS_INVALID_ARGUMENT);

    /* Destroy nulls the pointer; destroying null is a no-op. */
    CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);
    CHECK(seg == NULL);
    CHECK(unet_segmenter_destroy(&seg) == UNET_STATUS_OK);
    CHECK(unet_segmenter_destroy(NULL) == UNET_STATUS_OK);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("smoke ok (%s, unet-runtime %s)\n", name, unet_version());
    return 0;
}
