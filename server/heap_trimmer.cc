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

void HeapTrimmer::Busy() {
  std::lock_guard<std::mutex> lock(mu_);
  ++busy_;
  idle_ = false;
}

void HeapTrimmer::Idle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle_ = true;
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
    // Only after work since the last trim: an idle server is not trimmed
    // again and again.
    cv_.wait(lock, [&] { return stopping_ || (idle_ && busy_ != trimmed_); });
    if (stopping_) break;
    const uint64_t busy = busy_;
    // Idle for `quiet_` with no new work: trim.
    if (cv_.wait_for(lock, absl::ToChronoNanoseconds(quiet_),
                     [&] { return stopping_ || busy_ != busy || !idle_; })) {
      continue;
    }
    trimmed_ = busy;
    ++trims_;
    lock.unlock();
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    lock.lock();
  }
}

}  // namespace ckpt::server
