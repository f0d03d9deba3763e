#ifndef CKPT_CLIENT_TORCH_TREE_H_
#define CKPT_CLIENT_TORCH_TREE_H_

// Internal: c10::IValue value trees <-> the flat pre-order Tree of the
// protocol. Not part of the public API.

#include <ATen/core/ivalue.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "client/raw_client.h"
#include "client/staging.h"
#include "common/types.h"

namespace ckpt::client::internal {

/// Host buffers that async saves snapshot into, kept across saves: a reused
/// buffer's pages are mapped already, so the next snapshot copies at memory
/// speed instead of faulting fresh pages in (the first save's stall is
/// several times the second's). Thread-safe.
class SnapshotBuffers {
 public:
  /// Idle buffers kept (the largest): a save in flight and the next one.
  static constexpr size_t kIdle = 2;
  /// A uint8 host buffer of at least `bytes` (page-locked if `pinned`): the
  /// smallest idle one that fits, or a new one of exactly `bytes`.
  at::Tensor Take(uint64_t bytes, bool pinned);
  /// An idle buffer that is not page-locked (undefined if none): the
  /// smallest that fits the last pageable Take, else the largest. A
  /// snapshot copies into it while it walks the tree, before it knows how
  /// much it needs (and Gives it back if it turns out too small).
  at::Tensor TakeIdlePageable();
  /// A buffer back for the next save (freed after Close).
  void Give(at::Tensor buffer);
  /// Frees the idle buffers.
  void Release();
  /// Frees the idle buffers and every buffer given back from now on.
  void Close();
  /// Bytes of the idle buffers.
  uint64_t idle_bytes();
  /// Bytes that snapshots copied while they walked their trees, in all
  /// (also those copied again when the buffer turned out too small).
  uint64_t copied_while_walking();
  void CountCopiedWhileWalking(uint64_t bytes);

 private:
  std::mutex mu_;
  std::vector<at::Tensor> idle_;
  uint64_t last_pageable_bytes_ = 0;
  uint64_t copied_while_walking_ = 0;
  bool closed_ = false;
};

/// An IValue flattened for RawClient::Save. The spans of `input` point into
/// `tensors` (contiguous host tensors), `snapshot` and `blobs`: keep this
/// alive during the save.
struct FlatValue {
  SaveInput input;
  std::vector<at::Tensor> tensors;
  /// Storages of tensors read in place (kept whatever their tensors do).
  std::vector<c10::Storage> storages;
  /// A snapshot's copy of every tensor (Flatten with snapshot): one buffer,
  /// from the SnapshotBuffers given (return it there after the save).
  at::Tensor snapshot;
  std::vector<std::string> blobs;
  /// Staging of device tensors, one per device, shared by its tensors: the
  /// pinned memory of a save is bounded by SaveStaging::kSlots chunks per
  /// device whatever the number of tensors.
  std::vector<std::shared_ptr<SaveStaging>> stagings;
  /// Pull sources of device tensors (input.sources points at them); each
  /// waits for its copies in flight when destroyed.
  std::vector<std::unique_ptr<DataSource>> device_sources;
  /// While flattening: device tensors (made contiguous) waiting for their
  /// device's staging.
  struct PendingSource {
    at::Tensor tensor;
    std::string name;
    size_t node;
  };
  std::vector<PendingSource> pending;
};

/// Flattens `value`. With `snapshot`, every tensor is copied into one host
/// buffer taken from `buffers` (a fresh one if null), pinned if any tensor
/// is on a device, so the caller may change its tensors right away (CPU
/// tensors with one memcpy each); without it CPU
/// contiguous tensors are referenced in place, non-contiguous ones copied one
/// by one, and device tensors read chunk by chunk through pinned staging
/// buffers (DeviceSource). Call it on the thread that saves: device reads
/// are ordered after the work queued on that thread's current streams (and
/// after the .contiguous() copies it queues there).
/// InvalidArgument naming the key for values that cannot be saved (sparse or
/// quantized tensors, dict keys other than str/int, objects).
absl::StatusOr<FlatValue> Flatten(const c10::IValue& value, bool snapshot,
                                  SnapshotBuffers* buffers = nullptr);

/// ckpt dtype of a LibTorch scalar type; InvalidArgument if none.
absl::StatusOr<DType> ToDType(c10::ScalarType type);
/// LibTorch scalar type of a ckpt dtype; InvalidArgument if LibTorch lacks it.
absl::StatusOr<c10::ScalarType> ToScalarType(DType dtype);

/// A LoadSink that builds the IValue tree: tensors are allocated on their
/// mapped device and filled piece by piece (CPU tensors directly in their
/// memory). `destinations`, when set, gives an existing tensor for some
/// nodes (index -> tensor) to fill in place instead.
///
/// Construct it on the thread that calls the load: copies into device
/// tensors start after the work queued on that thread's current streams at
/// construction (CallerStreams).
class IValueSink : public LoadSink {
 public:
  explicit IValueSink(MapLocation map_location) : map_location_(std::move(map_location)) {}

  absl::Status OnTree(const VersionInfo& version, const Tree& tree) override;
  absl::Status OnData(size_t node, uint64_t offset, absl::string_view bytes) override;
  /// True unless a tensor goes to a device (its copies are staged whole).
  bool AcceptsPartialPieces() const override { return partial_pieces_; }

  /// Waits for the asynchronous host-to-device copies (host
  /// synchronisation: the tensors are ready for whatever the caller queues
  /// next). Build() calls it. Internal naming the tensor on a CUDA error.
  absl::Status FinishDeviceCopies();

  /// After the load: the value (renaming keys of state_dict-like dicts).
  absl::StatusOr<c10::IValue> Build(const RenameRules& rename);

  /// For in-place loads: called from OnTree with the tree and flattened keys
  /// before any tensor is allocated; fills the destination tensor of each
  /// node (undefined: allocate as usual, or skip with skip_unchosen).
  std::function<absl::Status(const Tree&, const std::vector<std::string>&,
                             std::vector<at::Tensor>*)>
      choose_destinations;

  /// With choose_destinations: nodes it leaves undefined are not loaded at
  /// all (no memory), instead of being allocated.
  bool skip_unchosen = false;

  const Tree& tree() const { return tree_; }
  const VersionInfo& version() const { return version_; }

 private:
  MapLocation map_location_;
  const CallerStreams caller_streams_;  // captured at construction
  VersionInfo version_;
  Tree tree_;
  std::vector<std::string> keys_;    // flattened key per node, for errors
  std::vector<at::Tensor> tensors_;  // per node
  std::vector<std::string> blobs_;   // per node (byte leaves)
  std::vector<bool> host_direct_;    // data written straight into tensors_[i]
  bool partial_pieces_ = false;      // no destination on a device (OnTree)
  // Declared after tensors_, so destroyed before them: each uploader's
  // destructor waits for its copies before the tensors they write are freed
  // (a failed load must not leave copies into freed memory).
  std::map<std::string, std::unique_ptr<DeviceUploader>> uploaders_;  // by device
};

}  // namespace ckpt::client::internal

#endif  // CKPT_CLIENT_TORCH_TREE_H_
