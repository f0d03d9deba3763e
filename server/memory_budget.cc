#include "server/memory_budget.h"

#include <utility>

namespace ckpt::server {

bool MemoryBudget::TryReserve(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_acquire);
  do {
    if (limit_ != 0 && (bytes > limit_ || used > limit_ - bytes)) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_acq_rel));
  return true;
}

MemoryReservation& MemoryReservation::operator=(MemoryReservation&& other) noexcept {
  if (this != &other) {
    Reset();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

bool MemoryReservation::Grow(uint64_t bytes) {
  if (budget_ == nullptr) return true;
  if (!budget_->TryReserve(bytes)) return false;
  bytes_ += bytes;
  return true;
}

void MemoryReservation::Reset() {
  if (budget_ != nullptr && bytes_ > 0) budget_->Release(bytes_);
  bytes_ = 0;
}

uint64_t NodeMemory(const Node& node) {
  // Heap strings beyond the small-string buffer; vectors; hash-map entries
  // of the save's chunk bookkeeping (~64 bytes a digest).
  auto heap = [](const std::string& s) -> uint64_t { return s.size() > 15 ? s.size() + 1 : 0; };
  uint64_t bytes = sizeof(Node) + heap(node.string_value) + heap(node.tensor.device);
  if (const auto* key = std::get_if<std::string>(&node.key)) bytes += heap(*key);
  bytes += node.tensor.shape.size() * sizeof(int64_t);
  bytes += node.data.chunks.size() * (sizeof(Digest) + 64);
  return bytes;
}

}  // namespace ckpt::server
