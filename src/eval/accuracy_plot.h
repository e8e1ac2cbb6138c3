// The needle-in-a-haystack picture of an evaluation: one panel per task, a grid of context
// length (x) by needle depth (y, 0% at the top), each cell colored by its accuracy
// (red 0% .. yellow 50% .. green 100%) with the percentage written in it.
#pragma once

#include <filesystem>

#include "eval/eval_report.h"
#include "eval/raster.h"

namespace lserve::eval {

Rgb accuracy_color(double accuracy);  // accuracy in [0, 1]
Image render_accuracy_plot(const EvalReport& report);
void write_accuracy_png(const std::filesystem::path& file, const EvalReport& report);

}  // namespace lserve::eval
