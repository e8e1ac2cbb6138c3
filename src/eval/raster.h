// Raster: an RGB image with the few drawing operations the accuracy plots need (filled
// rectangles, outlines, text in the built-in bitmap font), and writing it as a PNG (libpng).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

namespace lserve::eval {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
};

class Image {
 public:
  Image(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  Rgb at(int x, int y) const { return pixels_[index(x, y)]; }
  const std::vector<Rgb>& pixels() const { return pixels_; }  // row-major, top row first

  // Drawing clips to the image.
  void fill_rect(int x, int y, int w, int h, Rgb color);
  void outline_rect(int x, int y, int w, int h, Rgb color);  // one pixel wide
  // Text with its top-left corner at (x, y), each font pixel a scale x scale square.
  void draw_text(int x, int y, std::string_view text, int scale, Rgb color);

  // Throws Error naming the file when it cannot be written.
  void write_png(const std::filesystem::path& file) const;

 private:
  size_t index(int x, int y) const { return static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x); }
  int width_, height_;
  std::vector<Rgb> pixels_;
};

// Width and height in pixels of a line of text at `scale`.
int text_width(std::string_view text, int scale);
int text_height(int scale);

}  // namespace lserve::eval
