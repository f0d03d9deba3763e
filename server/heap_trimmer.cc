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

uint64_t HeapTrimmer::trims() {
  std::lock_guard<std::mutex> lock(mu_);
  return trims_;
}

void HeapTrimmer::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    // Only after streams since the last trim: an idle server is not trimmed
    // again and again.
    cv_.wait(lock, [&] { return stopping_ || (open_ == 0 && opened_ != trimmed_); });
    if (stopping_) break;
    const uint64_t opened = opened_;
    // No stream opened for `quiet_`: trim.
    if (cv_.wait_for(lock, absl::ToChronoNanoseconds(quiet_),
                     [&] { return stopping_ || opened_ != opened; })) {
      continue;
    }
    trimmed_ = opened;
    ++trims_;
    lock.unlock();
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    lock.lock();
  }
}

}  // namespace ckpt::server
