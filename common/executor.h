#ifndef CKPT_COMMON_EXECUTOR_H_
#define CKPT_COMMON_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ckpt {

/// A fixed pool of threads running posted tasks in FIFO order. gRPC reactors
/// post their blocking storage work here so that callbacks never block.
/// Thread-safe. Shutdown() (also run by the destructor) runs the tasks already
/// posted, then joins; tasks posted after it run inline on the caller.
class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  /// Queues `task` to run on a pool thread (inline once shut down).
  void Post(std::function<void()> task);

  /// Runs what is queued, then stops the threads. Idempotent.
  void Shutdown();

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ckpt

#endif  // CKPT_COMMON_EXECUTOR_H_
