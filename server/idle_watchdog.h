#ifndef CKPT_SERVER_IDLE_WATCHDOG_H_
#define CKPT_SERVER_IDLE_WATCHDOG_H_

// Cancels streams whose peer stopped: a Save that has waited for the
// client's next message, or a Load that has waited for the client to take
// the next one, longer than --idle-timeout.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"

namespace ckpt::server {

/// A stream the watchdog watches. The stream marks when it starts and stops
/// waiting for its peer.
class IdleWatched {
 public:
  virtual ~IdleWatched() = default;
  /// The stream waited longer than the timeout (called once per wait, from
  /// the watchdog's thread, never after IdleWatchdog::Remove returned: a
  /// stream removes itself in OnDone, so its call still exists here).
  virtual void OnIdle(absl::Duration waited) = 0;

  /// Starts / stops the clock (thread-safe).
  void StartWaiting() {
    waiting_since_ns_.store(absl::GetCurrentTimeNanos(), std::memory_order_relaxed);
  }
  void StopWaiting() { waiting_since_ns_.store(0, std::memory_order_relaxed); }

 private:
  friend class IdleWatchdog;
  std::atomic<int64_t> waiting_since_ns_{0};
};

/// Checks the watched streams a few times per timeout on its own thread.
/// Thread-safe.
class IdleWatchdog {
 public:
  /// `timeout` zero or less: disabled (Add and Remove do nothing).
  explicit IdleWatchdog(absl::Duration timeout);
  /// Stops the thread.
  ~IdleWatchdog();

  absl::Duration timeout() const { return timeout_; }
  bool enabled() const { return timeout_ > absl::ZeroDuration(); }

  void Add(IdleWatched* stream);
  /// After this returns, OnIdle of `stream` is neither running nor called.
  void Remove(IdleWatched* stream);

 private:
  void Loop();

  const absl::Duration timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  absl::flat_hash_set<IdleWatched*> streams_;
  IdleWatched* firing_ = nullptr;  // OnIdle running outside mu_
  std::condition_variable fired_cv_;
  std::thread thread_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_IDLE_WATCHDOG_H_
