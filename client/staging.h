#ifndef CKPT_CLIENT_STAGING_H_
#define CKPT_CLIENT_STAGING_H_

// Internal: device <-> host staging for GPU tensors. Copies go through pinned
// host buffers on a dedicated stream of the tensor's device (cudaMemcpyAsync
// underneath, issued by ATen's non_blocking copy_), so that the copy of one
// chunk overlaps the hashing or network transfer of another. Written against
// c10's device-generic stream and event API, so it builds with every LibTorch
// (CPU-only ones included) and is used only when a tensor lives on an
// accelerator.
//
// Ordering rules (what a training job relies on):
//  - Save: the staging stream waits for an event recorded on the caller's
//    current stream at the time of the Save call (after the .contiguous()
//    copies, which are queued on that stream), so kernels the caller queued
//    before Save (optimizer.step()) finish before any byte is read.
//  - Load: the upload stream waits for the caller's current stream (captured
//    when the load starts) before its first copy, so queued kernels that read
//    or write the destinations (or memory a fresh allocation reuses) finish
//    first; the load ends with a host synchronisation on every copy, so the
//    result is ordered before whatever the caller queues next.
//  - Completion is tracked by one event per buffer, never by synchronising a
//    whole stream (pool streams may be shared with other code, e.g. NCCL).
//  - Destructors wait for their copies still in flight: no buffer or tensor
//    is freed under a running copy.
//  - Every CUDA error (c10::Error) becomes an absl::Status naming the tensor.

#include <ATen/core/Tensor.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/raw_client.h"

namespace ckpt::client::internal {

/// The streams that are current in the constructing thread, per accelerator
/// device: captured on the caller's thread when a Save or Load starts, so
/// that work done later (or on another thread) orders itself after what the
/// caller had queued.
class CallerStreams {
 public:
  /// Captures the current stream of every visible CUDA device (no device
  /// context is created). Never throws.
  CallerStreams();
  /// The captured stream of `device`; a device that was not captured gets
  /// the stream current in the calling thread now.
  c10::Stream Get(c10::Device device) const;

 private:
  std::vector<c10::Stream> cuda_;  // by device index
};

/// Device-to-host staging shared by every tensor of one device in one save:
/// a few pinned buffers (kSlots, each sized to the largest chunk read) and
/// one stream, whatever the number of tensors. Thread-safe: the save hashes
/// one batch on a helper thread while it sends the previous one.
class SaveStaging {
 public:
  /// Buffers: two per thread that reads (hashing and sending).
  static constexpr int kSlots = 4;

  /// Staging for `device`, ordered after `caller` (the stream current in
  /// the Save caller's thread): records an event on it now and makes the
  /// staging stream wait for it. Call after every .contiguous() copy of
  /// this device's tensors has been queued. Internal status naming the
  /// device on a CUDA error.
  static absl::StatusOr<std::shared_ptr<SaveStaging>> Create(c10::Device device,
                                                             c10::Stream caller);
  /// Waits for the copies still in flight.
  ~SaveStaging();
  SaveStaging(const SaveStaging&) = delete;
  SaveStaging& operator=(const SaveStaging&) = delete;

  /// Fills `out` with bytes [offset, offset + out.size()) of `bytes` (a flat
  /// uint8 device tensor owned by `owner`), then starts copying the
  /// following chunk of the same tensor into another buffer. `name` names
  /// the tensor in errors.
  absl::Status Read(const void* owner, const at::Tensor& bytes, const std::string& name,
                    uint64_t offset, absl::Span<uint8_t> out);
  /// Waits for the copies of `owner`'s bytes and forgets them (call before
  /// `owner`'s tensor goes away).
  void Release(const void* owner);

  /// Pinned bytes held now (for tests: bounded by kSlots chunks).
  size_t pinned_bytes() const;

 private:
  struct Slot {
    at::Tensor host;                 // pinned uint8, capacity = numel
    std::optional<c10::Event> done;  // recorded after the copy into `host`
    const void* owner = nullptr;     // whose bytes it holds
    uint64_t offset = 0;
    size_t length = 0;
    bool busy = false;      // a copy may still be running
    uint64_t last_use = 0;  // LRU
  };

  SaveStaging(c10::Device device, c10::Stream stream);
  void Wait(Slot& slot);           // may throw c10::Error
  Slot& Victim(const Slot* keep);  // least recently used
  void Start(Slot& slot, const void* owner, const at::Tensor& bytes, uint64_t offset,
             size_t length);  // may throw c10::Error

  const c10::Device device_;
  const c10::Stream stream_;
  mutable std::mutex mu_;
  std::optional<c10::Event> caller_ready_;
  Slot slots_[kSlots];
  uint64_t clock_ = 0;
};

/// Reads a device tensor's bytes chunk by chunk for Save through its
/// device's SaveStaging.
class DeviceSource : public DataSource {
 public:
  /// `contiguous` must be contiguous (its .contiguous() copy queued on the
  /// caller's stream before `staging` was ordered after that stream).
  DeviceSource(at::Tensor contiguous, std::string name, std::shared_ptr<SaveStaging> staging);
  ~DeviceSource() override;
  absl::Status Read(uint64_t offset, absl::Span<uint8_t> out) override;

 private:
  at::Tensor bytes_;  // flat uint8 view of the tensor
  std::string name_;
  std::shared_ptr<SaveStaging> staging_;
};

/// Writes pieces into device tensors for Load: each piece is copied into a
/// pinned buffer and sent to the device asynchronously while the next piece
/// arrives from the network. One per device per load.
class DeviceUploader {
 public:
  /// An uploader for `device` whose stream first waits for `caller` (the
  /// stream current in the Load caller's thread). Internal on a CUDA error.
  static absl::StatusOr<std::unique_ptr<DeviceUploader>> Create(c10::Device device,
                                                                c10::Stream caller,
                                                                size_t buffer_bytes = 1 << 20);
  /// Waits for the copies still in flight (their destinations may be freed
  /// right after).
  ~DeviceUploader();
  DeviceUploader(const DeviceUploader&) = delete;
  DeviceUploader& operator=(const DeviceUploader&) = delete;

  /// Copies `bytes` to `dst` (contiguous, on the uploader's device) at byte
  /// `offset`. `name` names the tensor in errors.
  absl::Status Write(const at::Tensor& dst, const std::string& name, uint64_t offset,
                     absl::string_view bytes);
  /// Waits until every copy has landed (host synchronisation). Internal
  /// naming the last tensor written on a CUDA error.
  absl::Status Finish();

 private:
  struct Slot {
    at::Tensor host;                 // pinned uint8
    std::optional<c10::Event> done;  // recorded after the copy from `host`
    bool busy = false;
  };
  DeviceUploader(c10::Device device, c10::Stream stream);
  void Wait(Slot& slot);  // may throw c10::Error

  const c10::Device device_;
  const c10::Stream stream_;
  std::optional<c10::Event> caller_ready_;
  Slot slots_[2];
  int next_ = 0;
  std::string last_name_;  // for errors from Finish
};

}  // namespace ckpt::client::internal

#endif  // CKPT_CLIENT_STAGING_H_
