// The attention policies the engine tests run the bundled tiny model under: small pages and
// windows, so that prompts of a few hundred tokens exercise every sparse path (streaming heads
// drop pages, retrieval heads select under a budget below the context length).
#pragma once

#include "sparse/sparsity_config.h"

namespace lserve::test {

inline SparsityConfig small_lserve_policy(int32_t selector_interval) {
  SparsityConfig s;
  s.policy = AttentionPolicy::LServe;
  s.page_size = 16;
  s.logical_page_size = 4;
  s.token_budget = 64;
  s.selector_interval = selector_interval;
  s.prefill_window = {16, 96};
  s.decode_window = {16, 32};
  return s;
}

inline SparsityConfig small_dense_policy() {
  SparsityConfig s;
  s.page_size = 16;
  return s;
}

}  // namespace lserve::test
