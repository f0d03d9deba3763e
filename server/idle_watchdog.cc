#include "server/idle_watchdog.h"

#include <algorithm>
#include <vector>

namespace ckpt::server {

IdleWatchdog::IdleWatchdog(absl::Duration timeout) : timeout_(timeout) {
  if (enabled()) thread_ = std::thread([this] { Loop(); });
}

IdleWatchdog::~IdleWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void IdleWatchdog::Add(IdleWatched* stream) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu_);
  streams_.insert(stream);
}

void IdleWatchdog::Remove(IdleWatched* stream) {
  if (!enabled()) return;
  std::unique_lock<std::mutex> lock(mu_);
  streams_.erase(stream);
  fired_cv_.wait(lock, [&] { return firing_ != stream; });
}

void IdleWatchdog::Loop() {
  // A few checks per timeout: a stream is cancelled between 1 and 1.25
  // timeouts after it started waiting.
  const absl::Duration period = std::clamp(timeout_ / 4, absl::Milliseconds(10), absl::Seconds(1));
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, absl::ToChronoMilliseconds(period));
    if (stopping_) break;
    const int64_t now = absl::GetCurrentTimeNanos();
    const int64_t limit = absl::ToInt64Nanoseconds(timeout_);
    std::vector<std::pair<IdleWatched*, int64_t>> idle;  // stream, waiting since
    for (IdleWatched* s : streams_) {
      const int64_t since = s->waiting_since_ns_.load(std::memory_order_relaxed);
      if (since != 0 && now - since > limit) idle.emplace_back(s, since);
    }
    for (auto [stream, since] : idle) {
      // Skip a stream removed while an earlier one fired, or one that
      // stopped or restarted waiting meanwhile.
      if (!streams_.contains(stream) ||
          !stream->waiting_since_ns_.compare_exchange_strong(since, 0)) {
        continue;
      }
      firing_ = stream;
      lock.unlock();
      stream->OnIdle(absl::Nanoseconds(now - since));
      lock.lock();
      firing_ = nullptr;
      fired_cv_.notify_all();
    }
  }
}

}  // namespace ckpt::server
