/* Resident memory over many frames through the C ABI (a benchmark, not a test).
 *
 * usage: rss_loop MODEL.onnx [FRAMES=10000] [WIDTH=256] [HEIGHT=256] [BACKEND=1]
 * Prints the resident set size every FRAMES/10 frames; after warm-up it
 * must stay flat. Run through rss_bench.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "unet_runtime.h"

static long rss_kib(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: rss_loop MODEL.onnx [FRAMES] [WIDTH] [HEIGHT] [BACKEND]\n");
        return 2;
    }
    long frames = argc > 2 ? atol(argv[2]) : 10000;
    size_t w = argc > 3 ? (size_t)atol(argv[3]) : 256, h = argc > 4 ? (size_t)atol(argv[4]) : 256;
    UnetBackend backend = argc > 5 ? (UnetBackend)atoi(argv[5]) : UNET_BACKEND_TRACT;
    UnetSegmenter *seg = NULL;
    if (unet_segmenter_create(argv[1], backend, &seg) != UNET_STATUS_OK) {
        fprintf(stderr, "create: %s\n", unet_last_error());
        return 1;
    }
    unsigned char *rgb = malloc(w * h * 3), *mask = malloc(w * h);
    long every = frames >= 10 ? frames / 10 : 1, first = 0;
    for (long i = 0; i < frames; i++) {
        for (size_t p = 0; p < w * h * 3; p++) rgb[p] = (unsigned char)(p * 7 + i);
        if (unet_segmenter_segment(seg, rgb, w * h * 3, w, h, w * 3, UNET_PIXEL_FORMAT_RGB8, mask,
                                   w * h, NULL, 0) != UNET_STATUS_OK) {
            fprintf(stderr, "frame %ld: %s\n", i, unet_last_error());
            return 1;
        }
        if ((i + 1) % every == 0) {
            long r = rss_kib();
            if (!first) first = r;
            printf("frame %6ld  rss %7ld KiB  (%+ld KiB since frame %ld)\n", i + 1, r, r - first, every);
            fflush(stdout);
        }
    }
    unet_segmenter_destroy(&seg);
    free(rgb);
    free(mask);
    return 0;
}
