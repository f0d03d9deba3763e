#ifndef CKPT_SERVER_HEAP_TRIMMER_H_
#define CKPT_SERVER_HEAP_TRIMMER_H_

// Gives the heap's free memory back to the system once the server has been
// idle for a moment: glibc keeps what a burst of saves freed in its arenas
// (a server that held 1.3 GB for 64 saves at once kept 1 GB after them), so
// without this the server's resident memory stays at its highest.

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "absl/time/time.h"

namespace ckpt::server {

/// Calls malloc_trim on its own thread once no stream has been open for
/// `quiet`, then every 10 x `quiet` while none opens, kLateTrims times.
/// Thread-safe.
class HeapTrimmer {
 public:
  explicit HeapTrimmer(absl::Duration quiet);
  /// Stops the thread.
  ~HeapTrimmer();

  /// A Save or Load stream opened: a pending trim waits until none is open.
  void StreamOpened();
  /// A stream opened before ended.
  void StreamClosed();

 private:
  static constexpr int kLateTrims = 6;

  void Loop();
  // malloc_trim, outside `lock` (mu_).
  static void Trim(std::unique_lock<std::mutex>& lock);

  const absl::Duration quiet_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  int64_t open_ = 0;      // streams open
  uint64_t opened_ = 0;   // streams opened so far
  uint64_t trimmed_ = 0;  // opened_ when the heap was last trimmed
  std::thread thread_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_HEAP_TRIMMER_H_
