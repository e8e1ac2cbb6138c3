// RequestStream: hands one HTTP request's engine outputs from the engine thread (which must
// never block on a slow client) to the HTTP thread that answers it. One stream may carry
// several engine requests: the choices of one API request (n > 1, several prompts).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <utility>
#include <vector>

#include "engine/request.h"

namespace lserve::server {

class RequestStream {
 public:
  explicit RequestStream(int num_choices) : unfinished_(num_choices) {}

  void push(int choice, RequestOutput&& out) {
    std::lock_guard lock(mutex_);
    if (out.finished) --unfinished_;
    queue_.emplace_back(choice, std::move(out));
    ready_.notify_one();
  }
  // What arrived, waiting up to `timeout` for something (may return nothing).
  std::vector<std::pair<int, RequestOutput>> wait(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [&] { return !queue_.empty(); });
    std::vector<std::pair<int, RequestOutput>> out(std::make_move_iterator(queue_.begin()),
                                                   std::make_move_iterator(queue_.end()));
    queue_.clear();
    return out;
  }
  // Every choice has delivered its final output (it may still be queued).
  bool all_finished() const {
    std::lock_guard lock(mutex_);
    return unfinished_ == 0;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::pair<int, RequestOutput>> queue_;
  int unfinished_;
};

}  // namespace lserve::server
