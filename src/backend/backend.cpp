#include "backend/backend.h"

#include <cstring>

namespace lserve {

uint64_t Backend::open_download(const Tensor& src) {
  LSERVE_CHECK(src.nbytes() <= kMaxQueuedDownloadBytes, "a queued download of {} bytes (at most {})", src.nbytes(),
               kMaxQueuedDownloadBytes);
  LSERVE_CHECK(next_ticket_ - next_to_finish_ < kMaxQueuedDownloads, "{} queued downloads are open already",
               kMaxQueuedDownloads);
  return next_ticket_++;
}

void Backend::close_download(uint64_t ticket) {
  LSERVE_CHECK(ticket == next_to_finish_, "download {} finished out of order (the next is {})", ticket, next_to_finish_);
  ++next_to_finish_;
}

uint64_t Backend::queue_download(const Tensor& src) {
  const uint64_t ticket = open_download(src);
  QueuedDownload& d = downloads_.emplace_back(QueuedDownload{ticket, std::vector<char>(src.nbytes())});
  if (!d.bytes.empty()) download(src, d.bytes.data());
  return ticket;
}

void Backend::finish_download(uint64_t ticket, void* host_dst) {
  close_download(ticket);
  LSERVE_CHECK(!downloads_.empty() && downloads_.front().ticket == ticket, "no queued download {}", ticket);
  const std::vector<char>& bytes = downloads_.front().bytes;
  if (!bytes.empty()) std::memcpy(host_dst, bytes.data(), bytes.size());
  downloads_.pop_front();
}

void Backend::copy(const Tensor& src, Tensor dst) {
  LSERVE_CHECK(src.nbytes() == dst.nbytes() && src.device == dst.device, "copy of {} bytes into {} bytes",
               src.nbytes(), dst.nbytes());
  if (src.nbytes()) std::memmove(dst.data, src.data, src.nbytes());
}

}  // namespace lserve
