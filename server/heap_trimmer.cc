#include "server/heap_trimmer.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

namespace ckpt::server {

HeapTrimmer::HeapTrimmer(absl::Duration quiet) : quiet_(quiet), thread_([this] { Loop(); }) {}

HeapTrimmer::~HeapTrimmer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void HeapTrimmer::StreamOpened() {
  std::lock_guard<std::mutex> lock(mu_);
  ++open_;
  ++opened_;
}

void HeapTrimmer::StreamClosed() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (--open_ != 0) return;
  }
  cv_.notify_all();
}

void HeapTrimmer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    // Only after streams since the last trim: an idle server is not trimmed
    // again and again.
    cv_.wait(lock, [&] { return stopping_ || (open_ == 0 && opened_ != trimmed_); });
    if (stopping_) break;
    const uint64_t opened = opened_;
    // True if a stream opens (or the trimmer stops) within `d`.
    auto interrupted = [&](absl::Duration d) {
      return cv_.wait_for(lock, absl::ToChronoNanoseconds(d),
                          [&] { return stopping_ || opened_ != opened; });
    };
    // No stream opened for `quiet_`: trim; then every ten times that for a
    // minute of such, for what is freed late (RocksDB's compactions of the
    // burst's files, uploads finishing on their own threads).
    if (interrupted(quiet_)) continue;
    trimmed_ = opened;
    Trim(lock);
    for (int i = 0; i < kLateTrims && !interrupted(10 * quiet_); ++i) Trim(lock);
  }
}

void HeapTrimmer::Trim(std::unique_lock<std::mutex>& lock) {
  lock.unlock();
#ifdef __GLIBC__
  malloc_trim(0);
#endif
  lock.lock();
}

}  // namespace ckpt::server
