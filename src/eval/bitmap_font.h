// A tiny 5x7 bitmap font for the labels of the accuracy plots: digits, capital letters (small
// letters are drawn as capitals) and a few signs (% . , - _ : / ( ) = + ?). Anything else is
// drawn as '?'.
#pragma once

#include <array>
#include <cstdint>

namespace lserve::eval {

inline constexpr int kGlyphWidth = 5;
inline constexpr int kGlyphHeight = 7;
inline constexpr int kGlyphAdvance = 6;  // glyph plus one column of space

// Row r (0 = top) of the glyph; bit (kGlyphWidth - 1 - x) is column x.
using Glyph = std::array<uint8_t, kGlyphHeight>;
const Glyph& glyph(char c);

}  // namespace lserve::eval
