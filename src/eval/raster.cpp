#include "eval/raster.h"

#include <png.h>

#include <algorithm>

#include "core/error.h"
#include "eval/bitmap_font.h"

namespace lserve::eval {

Image::Image(int width, int height, Rgb background)
    : width_(width), height_(height), pixels_(static_cast<size_t>(width) * static_cast<size_t>(height), background) {
  LSERVE_CHECK(width > 0 && height > 0, "image of {}x{} pixels", width, height);
}

void Image::fill_rect(int x, int y, int w, int h, Rgb color) {
  const int x0 = std::max(x, 0), y0 = std::max(y, 0);
  const int x1 = std::min(x + w, width_), y1 = std::min(y + h, height_);
  for (int yy = y0; yy < y1; ++yy)
    for (int xx = x0; xx < x1; ++xx) pixels_[index(xx, yy)] = color;
}

void Image::outline_rect(int x, int y, int w, int h, Rgb color) {
  fill_rect(x, y, w, 1, color);
  fill_rect(x, y + h - 1, w, 1, color);
  fill_rect(x, y, 1, h, color);
  fill_rect(x + w - 1, y, 1, h, color);
}

void Image::draw_text(int x, int y, std::string_view text, int scale, Rgb color) {
  for (char c : text) {
    const Glyph& g = glyph(c);
    for (int r = 0; r < kGlyphHeight; ++r)
      for (int col = 0; col < kGlyphWidth; ++col)
        if (g[static_cast<size_t>(r)] & (1u << (kGlyphWidth - 1 - col)))
          fill_rect(x + col * scale, y + r * scale, scale, scale, color);
    x += kGlyphAdvance * scale;
  }
}

void Image::write_png(const std::filesystem::path& file) const {
  // libpng's simplified API: no setjmp, errors come back as a message.
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(width_);
  image.height = static_cast<png_uint_32>(height_);
  image.format = PNG_FORMAT_RGB;
  static_assert(sizeof(Rgb) == 3, "pixels are packed RGB bytes");
  const int ok = png_image_write_to_file(&image, file.c_str(), 0, pixels_.data(), 0, nullptr);
  if (!ok) {
    const std::string message = image.message;
    png_image_free(&image);
    fail("{}: cannot write the PNG: {}", file.string(), message);
  }
}

int text_width(std::string_view text, int scale) {
  return text.empty() ? 0 : (static_cast<int>(text.size()) * kGlyphAdvance - 1) * scale;
}

int text_height(int scale) { return kGlyphHeight * scale; }

}  // namespace lserve::eval
