#include "eval/accuracy_plot.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <fmt/format.h>

namespace lserve::eval {

namespace {

constexpr Rgb kWhite{255, 255, 255}, kInk{20, 20, 20}, kGrid{90, 90, 90}, kNoData{200, 200, 200};
constexpr Rgb kRed{215, 48, 39}, kYellow{254, 224, 110}, kGreen{26, 152, 80};
constexpr int kScale = 2;     // font scale of the labels
constexpr int kTitleScale = 3;  // of the task names
constexpr int kPad = 16;      // between panels and around the figure
constexpr int kGap = 8;       // between a label and what it labels
constexpr int kPanelsPerRow = 3;

uint8_t lerp(uint8_t a, uint8_t b, double t) {
  return static_cast<uint8_t>(std::lround(a + (static_cast<double>(b) - a) * t));
}

Rgb mix(Rgb a, Rgb b, double t) { return {lerp(a.r, b.r, t), lerp(a.g, b.g, t), lerp(a.b, b.b, t)}; }

// Sizes shared by every panel.
struct Layout {
  int cell_w = 0, cell_h = 0;
  int y_labels_w = 0;  // depth tick labels
  int grid_w = 0, grid_h = 0;
  int panel_w = 0, panel_h = 0;
  int title_h = 0;     // task name above the grid
};

Layout layout_of(const EvalGrid& g) {
  Layout l;
  const int th = text_height(kScale);
  l.cell_w = text_width("100", kScale) + 2 * kGap;
  for (int64_t L : g.lengths) l.cell_w = std::max(l.cell_w, text_width(length_label(L), kScale) + kGap);
  l.cell_h = th + 2 * kGap;
  l.y_labels_w = text_width("DEPTH", kScale);
  for (int D : g.depths_permille) l.y_labels_w = std::max(l.y_labels_w, text_width(depth_label(D), kScale));
  l.grid_w = l.cell_w * static_cast<int>(g.lengths.size());
  l.grid_h = l.cell_h * static_cast<int>(g.depths_permille.size());
  l.title_h = text_height(kTitleScale) + kGap;
  const int x_title_w = text_width("CONTEXT LENGTH", kScale);
  l.panel_w = l.y_labels_w + kGap + std::max(l.grid_w, x_title_w);
  for (Task t : g.tasks) l.panel_w = std::max(l.panel_w, text_width(task_name(t), kTitleScale));
  // title, "DEPTH" line, grid, length ticks, axis title
  l.panel_h = l.title_h + (th + kGap) + l.grid_h + (kGap + th) + (kGap + th);
  return l;
}

void draw_panel(Image& img, int x0, int y0, const Layout& l, const EvalReport& r, Task task) {
  const EvalGrid& g = r.grid;
  const int th = text_height(kScale);
  img.draw_text(x0, y0, task_name(task), kTitleScale, kInk);
  int y = y0 + l.title_h;
  img.draw_text(x0, y, "DEPTH", kScale, kInk);
  y += th + kGap;
  const int gx = x0 + l.y_labels_w + kGap;  // grid origin
  const int gy = y;
  for (size_t row = 0; row < g.depths_permille.size(); ++row) {
    const int D = g.depths_permille[row];
    const int cy = gy + static_cast<int>(row) * l.cell_h;
    const std::string label = depth_label(D);
    img.draw_text(gx - kGap - text_width(label, kScale), cy + (l.cell_h - th) / 2, label, kScale, kInk);
    for (size_t col = 0; col < g.lengths.size(); ++col) {
      const int cx = gx + static_cast<int>(col) * l.cell_w;
      Count n;
      for (const CellResult& c : r.cells)
        if (c.task == task && c.length == g.lengths[col] && c.depth_permille == D) n += c;
      img.fill_rect(cx, cy, l.cell_w, l.cell_h, n.total ? accuracy_color(n.accuracy()) : kNoData);
      const std::string text = n.total ? fmt::format("{:.0f}", 100.0 * n.accuracy()) : "-";
      img.draw_text(cx + (l.cell_w - text_width(text, kScale)) / 2, cy + (l.cell_h - th) / 2, text, kScale, kInk);
    }
  }
  // Cell borders.
  for (size_t col = 0; col <= g.lengths.size(); ++col)
    img.fill_rect(gx + static_cast<int>(col) * l.cell_w, gy, 1, l.grid_h + 1, kGrid);
  for (size_t row = 0; row <= g.depths_permille.size(); ++row)
    img.fill_rect(gx, gy + static_cast<int>(row) * l.cell_h, l.grid_w + 1, 1, kGrid);
  y = gy + l.grid_h + kGap;
  for (size_t col = 0; col < g.lengths.size(); ++col) {
    const std::string label = length_label(g.lengths[col]);
    img.draw_text(gx + static_cast<int>(col) * l.cell_w + (l.cell_w - text_width(label, kScale)) / 2, y, label, kScale, kInk);
  }
  y += th + kGap;
  const int title_w = text_width("CONTEXT LENGTH", kScale);
  img.draw_text(gx + std::max(0, (l.grid_w - title_w) / 2), y, "CONTEXT LENGTH", kScale, kInk);
}

}  // namespace

Rgb accuracy_color(double a) {
  a = std::clamp(a, 0.0, 1.0);
  return a < 0.5 ? mix(kRed, kYellow, a / 0.5) : mix(kYellow, kGreen, (a - 0.5) / 0.5);
}

Image render_accuracy_plot(const EvalReport& r) {
  const EvalGrid& g = r.grid;
  const Layout l = layout_of(g);
  const int th = text_height(kScale);
  const int panels = static_cast<int>(g.tasks.size());
  const int cols = std::min(panels, kPanelsPerRow);
  const int rows = (panels + kPanelsPerRow - 1) / kPanelsPerRow;

  const std::string title = fmt::format("NEEDLE IN A HAYSTACK: {}, ATTENTION {}", r.model, policy_name(r.sparsity.policy));
  const std::string subtitle = fmt::format("SEED {}, {} SAMPLE{} PER CELL, {} SAMPLES, ACCURACY %", g.seed, g.samples,
                                           g.samples == 1 ? "" : "S", g.keys().size());
  const int legend_w = 200, legend_h = th;
  const int header_h = 2 * (th + kGap) + kGap;
  const int legend_block_h = kGap + legend_h + kGap + th;
  int width = kPad + cols * (l.panel_w + kPad);
  width = std::max({width, text_width(title, kScale) + 2 * kPad, text_width(subtitle, kScale) + 2 * kPad,
                    legend_w + 2 * kPad + 2 * text_width("100%", kScale)});
  const int height = kPad + header_h + rows * (l.panel_h + kPad) + legend_block_h + kPad;

  Image img(width, height, kWhite);
  img.draw_text(kPad, kPad, title, kScale, kInk);
  img.draw_text(kPad, kPad + th + kGap, subtitle, kScale, kInk);
  for (int k = 0; k < panels; ++k) {
    const int px = kPad + (k % kPanelsPerRow) * (l.panel_w + kPad);
    const int py = kPad + header_h + (k / kPanelsPerRow) * (l.panel_h + kPad);
    draw_panel(img, px, py, l, r, g.tasks[static_cast<size_t>(k)]);
  }

  // Color legend: a gradient bar from 0% to 100%.
  const int lx = kPad + text_width("0%", kScale) + kGap;
  const int ly = kPad + header_h + rows * (l.panel_h + kPad) + kGap;
  for (int x = 0; x < legend_w; ++x)
    img.fill_rect(lx + x, ly, 1, legend_h, accuracy_color(static_cast<double>(x) / (legend_w - 1)));
  img.outline_rect(lx - 1, ly - 1, legend_w + 2, legend_h + 2, kGrid);
  img.draw_text(kPad, ly, "0%", kScale, kInk);
  img.draw_text(lx + legend_w + kGap, ly, "100%", kScale, kInk);
  img.draw_text(lx + (legend_w - text_width("50%", kScale)) / 2, ly + legend_h + kGap, "50%", kScale, kInk);
  return img;
}

void write_accuracy_png(const std::filesystem::path& file, const EvalReport& report) {
  render_accuracy_plot(report).write_png(file);
}

}  // namespace lserve::eval
