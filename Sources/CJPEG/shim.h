#ifndef DIFFUSE_CJPEG_SHIM_H
#define DIFFUSE_CJPEG_SHIM_H
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* libjpeg's default error handler calls exit(), and its recovery mechanism is
   longjmp, which Swift cannot catch; decoding therefore runs in this small C
   helper, which turns an error into a return value and a message. Warnings are
   silenced except a premature end of data, which counts as an error (a
   truncated file is corrupt, as Pillow also treats it). */

/** A decoded image: 8-bit samples, interleaved, 1 (grey) or 3 (RGB) channels.
    `pixels` is malloc'ed; release it with free(). */
typedef struct {
    unsigned char *pixels;
    unsigned int width;
    unsigned int height;
    unsigned int channels;
    char message[JMSG_LENGTH_MAX];
} diffuse_jpeg_image;

typedef struct {
    struct jpeg_error_mgr base;
    jmp_buf jump;
    char *message;
} diffuse_jpeg_error_manager;

static void diffuse_jpeg_error_exit(j_common_ptr common) {
    diffuse_jpeg_error_manager *manager = (diffuse_jpeg_error_manager *)common->err;
    (*common->err->format_message)(common, manager->message);
    longjmp(manager->jump, 1);
}

static void diffuse_jpeg_emit_message(j_common_ptr common, int level) {
    if (level < 0 && common->err->msg_code == JWRN_JPEG_EOF) {
        diffuse_jpeg_error_exit(common);
    }
    if (level < 0) common->err->num_warnings++;
}

/** Decodes a JPEG held in memory to grey (grey files) or RGB (every other
    colour space; Adobe CMYK/YCCK files are converted from inverted CMYK).
    Returns 1 on success, 0 with `image->message` set on failure. Images above
    `maximumPixels` pixels fail. */
static inline int diffuse_jpeg_decode(const unsigned char *data, size_t size, unsigned long maximumPixels, diffuse_jpeg_image *image) {
    image->pixels = NULL;
    image->width = image->height = image->channels = 0;
    image->message[0] = 0;
    if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF) {
        strcpy(image->message, "not a JPEG file (bad signature)");
        return 0;
    }
    struct jpeg_decompress_struct decoder;
    diffuse_jpeg_error_manager errors;
    decoder.err = jpeg_std_error(&errors.base);
    errors.base.error_exit = diffuse_jpeg_error_exit;
    errors.base.emit_message = diffuse_jpeg_emit_message;
    errors.message = image->message;
    unsigned char *volatile pixels = NULL;
    unsigned char *volatile scanline = NULL;
    if (setjmp(errors.jump)) {
        free(pixels);
        free(scanline);
        jpeg_destroy_decompress(&decoder);
        if (image->message[0] == 0) strcpy(image->message, "libjpeg error");
        return 0;
    }
    jpeg_create_decompress(&decoder);
    jpeg_mem_src(&decoder, data, (unsigned long)size);
    jpeg_read_header(&decoder, TRUE);
    int cmyk = decoder.jpeg_color_space == JCS_CMYK || decoder.jpeg_color_space == JCS_YCCK;
    if (decoder.jpeg_color_space == JCS_GRAYSCALE) decoder.out_color_space = JCS_GRAYSCALE;
    else if (cmyk) decoder.out_color_space = JCS_CMYK;
    else decoder.out_color_space = JCS_RGB;
    if ((unsigned long)decoder.image_width * (unsigned long)decoder.image_height > maximumPixels) {
        strcpy(image->message, "image is larger than the decoder's pixel limit");
        jpeg_destroy_decompress(&decoder);
        return 0;
    }
    jpeg_start_decompress(&decoder);
    unsigned int width = decoder.output_width, height = decoder.output_height;
    unsigned int components = (unsigned int)decoder.output_components;
    unsigned int channels = cmyk ? 3 : components;
    if (components != (cmyk ? 4u : channels) || (channels != 1 && channels != 3)) {
        strcpy(image->message, "unsupported JPEG component layout");
        jpeg_destroy_decompress(&decoder);
        return 0;
    }
    pixels = (unsigned char *)malloc((size_t)width * height * channels + 1);
    scanline = (unsigned char *)malloc((size_t)width * components + 1);
    if (pixels == NULL || scanline == NULL) {
        free(pixels);
        free(scanline);
        strcpy(image->message, "out of memory");
        jpeg_destroy_decompress(&decoder);
        return 0;
    }
    while (decoder.output_scanline < height) {
        unsigned int row = decoder.output_scanline;
        JSAMPROW target = scanline;
        if (jpeg_read_scanlines(&decoder, &target, 1) != 1) {
            strcpy(image->message, "file is truncated");
            longjmp(errors.jump, 1);
        }
        unsigned char *destination = pixels + (size_t)row * width * channels;
        if (cmyk) {
            /* libjpeg hands Adobe CMYK out inverted (as stored); R = C·K / 255. */
            for (unsigned int column = 0; column < width; column++) {
                const unsigned char *source = scanline + column * 4;
                unsigned int key = source[3];
                destination[column * 3 + 0] = (unsigned char)((source[0] * key + 127) / 255);
                destination[column * 3 + 1] = (unsigned char)((source[1] * key + 127) / 255);
                destination[column * 3 + 2] = (unsigned char)((source[2] * key + 127) / 255);
            }
        } else {
            memcpy(destination, scanline, (size_t)width * channels);
        }
    }
    jpeg_finish_decompress(&decoder);
    jpeg_destroy_decompress(&decoder);
    free(scanline);
    image->pixels = pixels;
    image->width = width;
    image->height = height;
    image->channels = channels;
    return 1;
}

#endif
