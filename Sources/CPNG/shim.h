#ifndef DIFFUSE_CPNG_SHIM_H
#define DIFFUSE_CPNG_SHIM_H
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

/* libpng reports errors with longjmp, which Swift cannot catch, so decoding and
   encoding run in these small C helpers: each sets its own jump point and turns
   an error into a return value and a message. Warnings are silenced. */

/** A decoded image: 8-bit samples, interleaved, `channels` per pixel (1 grey,
    2 grey+alpha, 3 RGB, 4 RGBA). `pixels` is malloc'ed; release it with free(). */
typedef struct {
    unsigned char *pixels;
    unsigned int width;
    unsigned int height;
    unsigned int channels;
    char message[256];
} diffuse_png_image;

typedef struct {
    const unsigned char *data;
    size_t size;
    size_t position;
} diffuse_png_reader;

typedef struct {
    unsigned char *data;
    size_t size;
    size_t capacity;
    int failed;
} diffuse_png_writer;

static void diffuse_png_error(png_structp png, png_const_charp text) {
    char *message = (char *)png_get_error_ptr(png);
    if (message != NULL) {
        strncpy(message, text != NULL ? text : "libpng error", 255);
        message[255] = 0;
    }
    png_longjmp(png, 1);
}

static void diffuse_png_warning(png_structp png, png_const_charp text) {
    (void)png;
    (void)text;
}

static void diffuse_png_read(png_structp png, png_bytep target, size_t length) {
    diffuse_png_reader *reader = (diffuse_png_reader *)png_get_io_ptr(png);
    if (reader->size - reader->position < length) {
        png_error(png, "file is truncated");
    }
    memcpy(target, reader->data + reader->position, length);
    reader->position += length;
}

/** Decodes a PNG held in memory. Palette images become RGB (or RGBA with a tRNS
    chunk), grey below 8 bits is expanded, 16-bit samples are scaled to 8 bits
    (rounded), interlacing is undone; no gamma correction. Returns 1 on success,
    0 with `image->message` set on failure. Images above `maximumPixels` pixels fail. */
static inline int diffuse_png_decode(const unsigned char *data, size_t size, unsigned long maximumPixels, diffuse_png_image *image) {
    image->pixels = NULL;
    image->width = image->height = image->channels = 0;
    image->message[0] = 0;
    if (size < 8 || png_sig_cmp(data, 0, 8) != 0) {
        strcpy(image->message, "not a PNG file (bad signature)");
        return 0;
    }
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, image->message, diffuse_png_error, diffuse_png_warning);
    if (png == NULL) {
        strcpy(image->message, "libpng could not allocate a reader");
        return 0;
    }
    png_infop info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_read_struct(&png, NULL, NULL);
        strcpy(image->message, "libpng could not allocate an info struct");
        return 0;
    }
    diffuse_png_reader reader = { data, size, 0 };
    unsigned char *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        if (image->message[0] == 0) strcpy(image->message, "libpng error");
        return 0;
    }
    png_set_read_fn(png, &reader, diffuse_png_read);
    png_read_info(png, info);
    png_uint_32 width = png_get_image_width(png, info);
    png_uint_32 height = png_get_image_height(png, info);
    int colorType = png_get_color_type(png, info);
    int bitDepth = png_get_bit_depth(png, info);
    if ((unsigned long)width * (unsigned long)height > maximumPixels) {
        png_error(png, "image is larger than the decoder's pixel limit");
    }
    if (colorType == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (colorType == PNG_COLOR_TYPE_GRAY && bitDepth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (bitDepth == 16) png_set_scale_16(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    if (png_get_bit_depth(png, info) != 8 || channels < 1 || channels > 4) {
        png_error(png, "unsupported sample layout after expansion");
    }
    size_t rowBytes = png_get_rowbytes(png, info);
    if (rowBytes != (size_t)width * (size_t)channels) png_error(png, "unexpected row size");
    pixels = (unsigned char *)malloc(rowBytes * height + 1);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * (height + 1));
    if (pixels == NULL || rows == NULL) png_error(png, "out of memory");
    for (png_uint_32 row = 0; row < height; row++) rows[row] = pixels + row * rowBytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    image->pixels = pixels;
    image->width = width;
    image->height = height;
    image->channels = (unsigned int)channels;
    return 1;
}

static void diffuse_png_write_data(png_structp png, png_bytep source, size_t length) {
    diffuse_png_writer *writer = (diffuse_png_writer *)png_get_io_ptr(png);
    if (writer->size + length > writer->capacity) {
        size_t capacity = writer->capacity < 4096 ? 4096 : writer->capacity;
        while (capacity < writer->size + length) capacity *= 2;
        unsigned char *grown = (unsigned char *)realloc(writer->data, capacity);
        if (grown == NULL) {
            writer->failed = 1;
            png_error(png, "out of memory");
        }
        writer->data = grown;
        writer->capacity = capacity;
    }
    memcpy(writer->data + writer->size, source, length);
    writer->size += length;
}

static void diffuse_png_flush(png_structp png) { (void)png; }

/** Encodes 8-bit interleaved samples (`channels` 1 grey, 2 grey+alpha, 3 RGB,
    4 RGBA) as a non-interlaced PNG in memory. On success returns 1 and sets
    `*output` (malloc'ed; free() it) and `*outputSize`; on failure returns 0 with
    `message` (256 bytes) set. */
static inline int diffuse_png_encode(const unsigned char *pixels, unsigned int width, unsigned int height, unsigned int channels,
                                     int compressionLevel, unsigned char **output, size_t *outputSize, char *message) {
    *output = NULL;
    *outputSize = 0;
    message[0] = 0;
    int colorType;
    switch (channels) {
    case 1: colorType = PNG_COLOR_TYPE_GRAY; break;
    case 2: colorType = PNG_COLOR_TYPE_GRAY_ALPHA; break;
    case 3: colorType = PNG_COLOR_TYPE_RGB; break;
    case 4: colorType = PNG_COLOR_TYPE_RGB_ALPHA; break;
    default: strcpy(message, "a PNG has 1 to 4 channels"); return 0;
    }
    if (width == 0 || height == 0) {
        strcpy(message, "a PNG must be at least 1×1");
        return 0;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, message, diffuse_png_error, diffuse_png_warning);
    if (png == NULL) {
        strcpy(message, "libpng could not allocate a writer");
        return 0;
    }
    png_infop info = png_create_info_struct(png);
    if (info == NULL) {
        png_destroy_write_struct(&png, NULL);
        strcpy(message, "libpng could not allocate an info struct");
        return 0;
    }
    diffuse_png_writer writer = { NULL, 0, 0, 0 };
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        free(rows);
        free(writer.data);
        png_destroy_write_struct(&png, &info);
        if (message[0] == 0) strcpy(message, "libpng error");
        return 0;
    }
    png_set_write_fn(png, &writer, diffuse_png_write_data, diffuse_png_flush);
    png_set_compression_level(png, compressionLevel);
    png_set_IHDR(png, info, width, height, 8, colorType, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    rows = (png_bytep *)malloc(sizeof(png_bytep) * height);
    if (rows == NULL) png_error(png, "out of memory");
    size_t rowBytes = (size_t)width * channels;
    for (unsigned int row = 0; row < height; row++) rows[row] = (png_bytep)(pixels + row * rowBytes);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    free(rows);
    png_destroy_write_struct(&png, &info);
    *output = writer.data;
    *outputSize = writer.size;
    return 1;
}

#endif
