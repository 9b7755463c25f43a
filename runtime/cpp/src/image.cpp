// PNG in and out with libpng, and the image rules of runtime/inputs.py (Pillow's behaviour):
// - palette, grey, grey+alpha, RGB, RGBA at 1..16 bits become 8-bit RGB; 16-bit grey is scaled
//   (v / 257, rounded) as inputs.py does, 16-bit colour keeps the high byte as Pillow does;
// - alpha (also a palette's tRNS) is composited over white with Pillow's integer formula;
// - the eXIf chunk's orientation is applied (ImageOps.exif_transpose);
// - images over 64 megapixels are refused from the header, before decoding;
// - resize_bilinear is Pillow's two-pass convolution resampler (a triangle filter widened by
//   the scale when shrinking, 22-bit fixed-point coefficients, horizontal pass first).
#include <png.h>

#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qk/qk.hpp"

namespace qk {
namespace {

constexpr long long kMaxPixels = 64LL * 1024 * 1024;

// ------------------------------------------------------------------ reading (C style: libpng longjmps)

struct PngRead {
    // outputs; buffers are malloc'd so that a longjmp out of libpng leaks nothing we cannot free
    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0, channels = 0;  // after transforms
    unsigned char* pixels = nullptr;                  // height * rowbytes
    png_size_t rowbytes = 0;
    unsigned char** rows = nullptr;
    int orientation = 1;
    char message[256] = {0};
    int too_big = 0;
};

void on_png_error(png_structp png, png_const_charp msg) {
    auto* r = static_cast<PngRead*>(png_get_error_ptr(png));
    std::snprintf(r->message, sizeof r->message, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

// libpng drops an eXIf chunk it finds invalid with a warning ("eXIf: invalid"); Pillow refuses such an
// image (a broken EXIF block), so the reader marks it broken for load_png to refuse as well.
void on_png_warning(png_structp png, png_const_charp msg) {
    auto* r = static_cast<PngRead*>(png_get_error_ptr(png));
    if (r && msg && std::strstr(msg, "eXIf")) r->orientation = 0;
}

std::uint32_t rd16(const unsigned char* p, bool le) { return le ? (p[0] | (p[1] << 8)) : ((p[0] << 8) | p[1]); }
std::uint32_t rd32(const unsigned char* p, bool le) {
    return le ? (std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) | (std::uint32_t(p[3]) << 24))
              : ((std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | std::uint32_t(p[3]));
}

// The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF block; 1 when absent; 0 when the
// block is not TIFF-structured at all (Pillow refuses those: inputs.py then refuses the image).
int exif_orientation(const unsigned char* p, std::size_t n) {
    if (n >= 6 && std::memcmp(p, "Exif\0\0", 6) == 0) {
        p += 6;
        n -= 6;
    }
    if (n < 8) return 0;
    bool le;
    if (p[0] == 'I' && p[1] == 'I')
        le = true;
    else if (p[0] == 'M' && p[1] == 'M')
        le = false;
    else
        return 0;
    std::uint32_t ifd = rd32(p + 4, le);
    if (ifd + 2 > n) return 1;
    std::uint32_t count = rd16(p + ifd, le);
    for (std::uint32_t k = 0; k < count; ++k) {
        std::size_t e = ifd + 2 + 12 * std::size_t(k);
        if (e + 12 > n) return 1;
        if (rd16(p + e, le) == 0x0112 && rd16(p + e + 2, le) == 3) {
            int v = static_cast<int>(rd16(p + e + 8, le));
            return (v >= 1 && v <= 8) ? v : 1;
        }
    }
    return 1;
}

// Returns 0 on success; on failure r->message says why. Frees nothing: the caller does.
int read_png_file(std::FILE* fp, PngRead* r) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, r, on_png_error, on_png_warning);
    if (!png) {
        std::snprintf(r->message, sizeof r->message, "out of memory");
        return 1;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, nullptr, nullptr);
        std::snprintf(r->message, sizeof r->message, "out of memory");
        return 1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_read_struct(&png, &info, nullptr);
        return 1;
    }
    png_init_io(png, fp);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);  // a bad CRC anywhere is an error, as in Pillow
    png_read_info(png, info);
    png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    int depth = png_get_bit_depth(png, info), ctype = png_get_color_type(png, info);
    if (static_cast<long long>(w) * static_cast<long long>(h) > kMaxPixels) {
        r->width = w;
        r->height = h;
        r->too_big = 1;
        png_destroy_read_struct(&png, &info, nullptr);
        return 1;
    }
    // 16-bit grey without alpha stays 16-bit (scaled with rounding below); everything else -> 8 bits
    bool grey16 = depth == 16 && ctype == PNG_COLOR_TYPE_GRAY;
    if (ctype == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
    }
    if ((ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA) && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16 && !grey16) png_set_strip_16(png);  // the high byte, as Pillow's ;16B unpackers
    if (grey16) png_set_swap(png);                       // host order (little-endian) for reading as uint16
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    r->width = w;
    r->height = h;
    r->bit_depth = png_get_bit_depth(png, info);
    r->color_type = png_get_color_type(png, info);
    r->channels = png_get_channels(png, info);
    r->rowbytes = png_get_rowbytes(png, info);
    r->pixels = static_cast<unsigned char*>(std::malloc(r->rowbytes * h));
    r->rows = static_cast<unsigned char**>(std::malloc(sizeof(unsigned char*) * h));
    if (!r->pixels || !r->rows) {
        std::snprintf(r->message, sizeof r->message, "out of memory for a %ux%u image", w, h);
        png_destroy_read_struct(&png, &info, nullptr);
        return 1;
    }
    for (png_uint_32 y = 0; y < h; ++y) r->rows[y] = r->pixels + y * r->rowbytes;
    png_read_image(png, r->rows);
    png_read_end(png, info);  // reads (and CRC-checks) the chunks after the image data too
#ifdef PNG_eXIf_SUPPORTED
    png_bytep exif = nullptr;
    png_uint_32 exif_len = 0;
    if (r->orientation != 0 && png_get_eXIf_1(png, info, &exif_len, &exif) && exif)
        r->orientation = exif_orientation(exif, exif_len);
#endif
    png_destroy_read_struct(&png, &info, nullptr);
    return 0;
}

// Pillow's AlphaComposite over an opaque white background (Image.alpha_composite(white, rgba)).
std::uint8_t over_white(std::uint32_t c, std::uint32_t a) {
    if (a == 0) return 255;
    const std::uint32_t bits = 7;
    std::uint32_t coef1 = a * 255 * 255 * (1u << bits) / (255 * 255);
    std::uint32_t coef2 = 255 * (1u << bits) - coef1;
    std::uint32_t tmp = c * coef1 + 255 * coef2 + (0x80u << bits);
    return static_cast<std::uint8_t>((((tmp >> 8) + tmp) >> 8) >> bits);
}

Image orient(const Image& in, int o) {
    if (o == 1) return in;
    bool swap = o >= 5;  // transpose, rotations by 90 / 270, transverse
    Image out;
    out.width = swap ? in.height : in.width;
    out.height = swap ? in.width : in.height;
    out.rgb.resize(in.rgb.size());
    const int W = in.width, H = in.height;
    for (int y = 0; y < out.height; ++y)
        for (int x = 0; x < out.width; ++x) {
            int sx = x, sy = y;
            switch (o) {
                case 2: sx = W - 1 - x; break;                  // mirror left-right
                case 3: sx = W - 1 - x; sy = H - 1 - y; break;  // rotate 180
                case 4: sy = H - 1 - y; break;                  // mirror top-bottom
                case 5: sx = y; sy = x; break;                  // transpose
                case 6: sx = y; sy = H - 1 - x; break;          // rotate 90 clockwise (PIL ROTATE_270)
                case 7: sx = W - 1 - y; sy = H - 1 - x; break;  // transverse
                case 8: sx = W - 1 - y; sy = x; break;          // rotate 90 anticlockwise (PIL ROTATE_90)
            }
            std::memcpy(&out.rgb[(std::size_t(y) * out.width + x) * 3], &in.rgb[(std::size_t(sy) * W + sx) * 3], 3);
        }
    return out;
}

// ------------------------------------------------------------------ Pillow's resampler

constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
    int ksize = 0;
    std::vector<int> bounds;  // (xmin, count) per output pixel
    std::vector<int> k;       // fixed-point weights, ksize per output pixel
};

Coeffs precompute(int in_size, int out_size) {
    const double support_base = 1.0;  // the bilinear (triangle) filter
    double scale = static_cast<double>(in_size) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = support_base * filterscale;
    Coeffs c;
    c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
    c.bounds.resize(std::size_t(out_size) * 2);
    c.k.assign(std::size_t(out_size) * c.ksize, 0);
    std::vector<double> w(c.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        double center = (xx + 0.5) * scale;
        double ss = 1.0 / filterscale;
        int xmin = static_cast<int>(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = static_cast<int>(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; ++x) {
            double t = (x + xmin - center + 0.5) * ss;
            if (t < 0.0) t = -t;
            w[x] = t < 1.0 ? 1.0 - t : 0.0;
            ww += w[x];
        }
        for (int x = 0; x < xmax; ++x) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            c.k[std::size_t(xx) * c.ksize + x] =
                static_cast<int>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
        }
        c.bounds[2 * xx] = xmin;
        c.bounds[2 * xx + 1] = xmax;
    }
    return c;
}

inline std::uint8_t clip8(int v) {
    v >>= kPrecisionBits;  // arithmetic shift, as Pillow's lookup index
    return static_cast<std::uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

}  // namespace

Image resize_bilinear(const Image& in, int width, int height) {
    if (width < 1 || height < 1) throw InputError("cannot resize to " + std::to_string(width) + "x" + std::to_string(height));
    if (in.width == width && in.height == height) return in;
    Coeffs ch = precompute(in.width, width);
    Coeffs cv = precompute(in.height, height);
    bool need_h = width != in.width, need_v = height != in.height;
    // the horizontal pass only computes the rows the vertical pass reads
    int ybox_first = cv.bounds[0];
    int ybox_last = cv.bounds[2 * (height - 1)] + cv.bounds[2 * (height - 1) + 1];
    Image tmp;
    const Image* src = &in;
    if (need_h) {
        if (need_v)
            for (int y = 0; y < height; ++y) cv.bounds[2 * y] -= ybox_first;
        else
            ybox_first = 0, ybox_last = in.height;
        tmp.width = width;
        tmp.height = ybox_last - ybox_first;
        tmp.rgb.resize(std::size_t(tmp.width) * tmp.height * 3);
        for (int y = 0; y < tmp.height; ++y) {
            const std::uint8_t* row = &in.rgb[std::size_t(y + ybox_first) * in.width * 3];
            for (int xx = 0; xx < width; ++xx) {
                int xmin = ch.bounds[2 * xx], xmax = ch.bounds[2 * xx + 1];
                const int* k = &ch.k[std::size_t(xx) * ch.ksize];
                int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < xmax; ++x) {
                    const std::uint8_t* p = row + (x + xmin) * 3;
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                std::uint8_t* o = &tmp.rgb[(std::size_t(y) * width + xx) * 3];
                o[0] = clip8(s0);
                o[1] = clip8(s1);
                o[2] = clip8(s2);
            }
        }
        src = &tmp;
    }
    if (!need_v) return tmp;
    Image out;
    out.width = width;
    out.height = height;
    out.rgb.resize(std::size_t(width) * height * 3);
    const int W = src->width;
    for (int yy = 0; yy < height; ++yy) {
        int ymin = cv.bounds[2 * yy], ymax = cv.bounds[2 * yy + 1];
        const int* k = &cv.k[std::size_t(yy) * cv.ksize];
        for (int xx = 0; xx < W; ++xx) {
            int s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
            for (int y = 0; y < ymax; ++y) {
                const std::uint8_t* p = &src->rgb[(std::size_t(y + ymin) * W + xx) * 3];
                s0 += p[0] * k[y];
                s1 += p[1] * k[y];
                s2 += p[2] * k[y];
            }
            std::uint8_t* o = &out.rgb[(std::size_t(yy) * width + xx) * 3];
            o[0] = clip8(s0);
            o[1] = clip8(s1);
            o[2] = clip8(s2);
        }
    }
    return out;
}

Image load_png(const std::string& path) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
        throw InputError("image file " + path + " does not exist or is not a file");
    std::FILE* fp = std::fopen(path.c_str(), "rb");
    if (!fp) throw InputError("cannot open image " + path + ": " + std::strerror(errno));
    unsigned char sig[8] = {0};
    std::size_t got = std::fread(sig, 1, 8, fp);
    if (got != 8 || png_sig_cmp(sig, 0, 8) != 0) {
        std::fclose(fp);
        throw InputError(path + " is not a PNG file; the C++ runtime reads PNG images only (convert it to PNG first)");
    }
    std::rewind(fp);
    PngRead r;
    int rc = read_png_file(fp, &r);
    std::fclose(fp);
    struct Free {
        PngRead& r;
        ~Free() {
            std::free(r.pixels);
            std::free(r.rows);
        }
    } release{r};
    if (r.too_big)
        throw InputError("image " + path + " is " + std::to_string(r.width) + "x" + std::to_string(r.height) + " = " +
                         std::to_string(static_cast<long long>(r.width) * r.height) + " pixels, over the limit of " +
                         std::to_string(kMaxPixels) + " (refused as a possible decompression bomb); downscale it first");
    if (rc != 0) throw InputError("image " + path + " is truncated or corrupt: " + r.message);
    if (r.width < 1 || r.height < 1) throw InputError("image " + path + " is empty");
    if (r.orientation == 0)
        throw InputError("image " + path + " has a broken EXIF block (not TIFF-structured); re-save the image without EXIF data");

    Image img;
    img.width = static_cast<int>(r.width);
    img.height = static_cast<int>(r.height);
    img.rgb.resize(std::size_t(img.width) * img.height * 3);
    for (int y = 0; y < img.height; ++y) {
        const unsigned char* row = r.rows[y];
        std::uint8_t* o = &img.rgb[std::size_t(y) * img.width * 3];
        for (int x = 0; x < img.width; ++x, o += 3) {
            if (r.bit_depth == 16) {  // 16-bit grey, host order
                std::uint16_t v;
                std::memcpy(&v, row + 2 * x, 2);
                o[0] = o[1] = o[2] = static_cast<std::uint8_t>((v + 128u) / 257u);  // rint(v / 257)
                continue;
            }
            switch (r.channels) {
                case 1: o[0] = o[1] = o[2] = row[x]; break;
                case 2: o[0] = o[1] = o[2] = over_white(row[2 * x], row[2 * x + 1]); break;
                case 3: std::memcpy(o, row + 3 * x, 3); break;
                case 4:
                    for (int c = 0; c < 3; ++c) o[c] = over_white(row[4 * x + c], row[4 * x + 3]);
                    break;
                default: throw InputError("image " + path + " has an unsupported pixel layout");
            }
        }
    }
    return orient(img, r.orientation);
}

namespace {

struct PngWrite {
    char message[256] = {0};
};

void on_png_write_error(png_structp png, png_const_charp msg) {
    auto* w = static_cast<PngWrite*>(png_get_error_ptr(png));
    std::snprintf(w->message, sizeof w->message, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

int write_png_file(std::FILE* fp, const std::uint8_t* rgb, int width, int height, PngWrite* w) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, w, on_png_write_error, on_png_warning);
    if (!png) return 1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, nullptr);
        return 1;
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return 1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < height; ++y) png_write_row(png, const_cast<png_bytep>(rgb + std::size_t(y) * width * 3));
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

}  // namespace

void save_png(const std::string& path, const Image& image) {
    if (image.width < 1 || image.height < 1 || image.rgb.size() != std::size_t(image.width) * image.height * 3)
        throw InputError("cannot save an image of " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                         " with " + std::to_string(image.rgb.size()) + " bytes as PNG");
    namespace fs = std::filesystem;
    fs::path target(path);
    fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::error_code ec;
    fs::create_directories(dir, ec);
    std::string tmpl = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
    std::vector<char> name(tmpl.begin(), tmpl.end());
    name.push_back('\0');
    int fd = mkstemp(name.data());
    if (fd < 0) throw InputError("cannot write " + path + ": " + std::strerror(errno));
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);  // mkstemp makes 0600 files; give the usual permissions
    std::FILE* fp = fdopen(fd, "wb");
    if (!fp) {
        close(fd);
        unlink(name.data());
        throw InputError("cannot write " + path + ": " + std::strerror(errno));
    }
    PngWrite w;
    int rc = write_png_file(fp, image.rgb.data(), image.width, image.height, &w);
    bool ok = rc == 0 && std::fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    ok = (std::fclose(fp) == 0) && ok;
    if (!ok || std::rename(name.data(), path.c_str()) != 0) {
        int err = errno;
        unlink(name.data());
        throw InputError("cannot write " + path + ": " + (w.message[0] ? std::string(w.message) : std::strerror(err)));
    }
}

}  // namespace qk
