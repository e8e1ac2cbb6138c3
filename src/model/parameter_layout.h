// The parameters a Llama-family config needs: HF name, expected shape, and where each lands in
// ModelWeights. Shared by the file loader and the dummy generator so they cannot disagree.
#pragma once

#include <functional>
#include <string>

#include "model/weights.h"

namespace lserve {

using ParameterVisitor = std::function<void(const std::string& hf_name, Shape shape, Tensor* slot)>;

// Visits every parameter in file order (embedding, layers, final norm, lm_head unless tied);
// resizes w.layers.
void for_each_parameter(const ModelConfig& config, ModelWeights& w, const ParameterVisitor& visit);

}  // namespace lserve
