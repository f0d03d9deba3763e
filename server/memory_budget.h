#ifndef CKPT_SERVER_MEMORY_BUDGET_H_
#define CKPT_SERVER_MEMORY_BUDGET_H_

// A server-wide budget of bytes for what clients make the server hold in
// memory: the value trees of saves in flight and of multi-part parts waiting
// for the rest of their save. A tree of None nodes is ~40x bigger in memory
// than on the wire, so per-stream wire limits alone do not bound it.

#include <atomic>
#include <cstdint>

#include "common/types.h"

namespace ckpt::server {

/// Thread-safe counter of reserved bytes against a fixed limit.
class MemoryBudget {
 public:
  /// `limit` 0: no limit.
  explicit MemoryBudget(uint64_t limit) : limit_(limit) {}

  /// Reserves `bytes` if the total stays within the limit.
  bool TryReserve(uint64_t bytes);
  void Release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_acq_rel); }

  uint64_t used() const { return used_.load(std::memory_order_acquire); }
  uint64_t limit() const { return limit_; }

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

/// Bytes reserved from a MemoryBudget, released when destroyed. Move-only;
/// it travels with what it accounts for (a save's tree into a waiting part).
class MemoryReservation {
 public:
  MemoryReservation() = default;
  explicit MemoryReservation(MemoryBudget* budget) : budget_(budget) {}
  MemoryReservation(MemoryReservation&& other) noexcept { *this = std::move(other); }
  MemoryReservation& operator=(MemoryReservation&& other) noexcept;
  MemoryReservation(const MemoryReservation&) = delete;
  MemoryReservation& operator=(const MemoryReservation&) = delete;
  ~MemoryReservation() { Reset(); }

  /// Reserves `bytes` more; false (nothing reserved) past the budget.
  bool Grow(uint64_t bytes);
  /// Releases everything reserved.
  void Reset();
  uint64_t bytes() const { return bytes_; }

 private:
  MemoryBudget* budget_ = nullptr;
  uint64_t bytes_ = 0;
};

/// What one node of a value tree costs in memory while a save holds it (the
/// node, its strings, shape and chunk digests, and the save's per-digest
/// bookkeeping), an estimate within tens of percent.
uint64_t NodeMemory(const Node& node);

}  // namespace ckpt::server

#endif  // CKPT_SERVER_MEMORY_BUDGET_H_
