#ifndef CKPT_CLIENT_STAGING_H_
#define CKPT_CLIENT_STAGING_H_

// Internal: device <-> host staging for GPU tensors. Copies go through two
// pinned host buffers, each with a dedicated stream of the tensor's device
// (cudaMemcpyAsync underneath, issued by ATen's non_blocking copy_), so that
// the copy of one chunk overlaps the network transfer of the previous one.
// Written against c10's device-generic stream API, so it builds with every
// LibTorch (CPU-only ones included) and is used only when a tensor lives on
// an accelerator.

#include <ATen/core/Tensor.h>
#include <c10/core/Stream.h>

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "client/raw_client.h"

namespace ckpt::client::internal {

/// A double-buffered pinned host buffer pair bound to one device.
class PinnedPair {
 public:
  /// Buffers of `bytes` each for `device`.
  PinnedPair(c10::Device device, size_t bytes);

  struct Slot {
    at::Tensor host;                   // pinned uint8
    std::optional<c10::Stream> stream;  // its dedicated stream
    uint64_t offset = UINT64_MAX;      // which bytes it holds (reads)
    size_t length = 0;
    bool busy = false;                 // a copy may still be running
  };

  Slot& slot(int i) { return slots_[i]; }
  /// Waits for the slot's copy to finish.
  void Wait(Slot& slot);
  size_t capacity() const { return bytes_; }
  c10::Device device() const { return device_; }

 private:
  c10::Device device_;
  size_t bytes_;
  Slot slots_[2];
};

/// Reads a device tensor's bytes chunk by chunk for Save, prefetching the
/// next chunk while the caller hashes or sends the current one.
class DeviceSource : public DataSource {
 public:
  /// `tensor` must be contiguous; `chunk_bytes` sizes the staging buffers.
  DeviceSource(at::Tensor tensor, size_t chunk_bytes);
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) override;

 private:
  void Start(PinnedPair::Slot& slot, uint64_t offset, size_t length);

  at::Tensor bytes_;  // flat uint8 view of the tensor
  PinnedPair pair_;
  int next_ = 0;
};

/// Writes pieces into device tensors for Load: each piece is copied into a
/// pinned buffer and sent to the device asynchronously while the next piece
/// arrives from the network.
class DeviceUploader {
 public:
  explicit DeviceUploader(c10::Device device, size_t buffer_bytes = 1 << 20)
      : pair_(device, buffer_bytes) {}
  /// Copies `bytes` to `dst` (contiguous, on the uploader's device) at byte
  /// `offset`.
  absl::Status Write(const at::Tensor& dst, uint64_t offset, absl::string_view bytes);
  /// Waits until every copy has landed.
  void Finish();

 private:
  PinnedPair pair_;
  int next_ = 0;
};

}  // namespace ckpt::client::internal

#endif  // CKPT_CLIENT_STAGING_H_
