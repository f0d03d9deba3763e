#ifndef CKPT_CLIENT_CLIENT_H_
#define CKPT_CLIENT_CLIENT_H_

// The ckpt client library for LibTorch training jobs: torch.save, torch.load
// and load_state_dict against a ckpt server.
//
//   auto client = ckpt::client::Client::Connect("localhost:50051", {});
//   c10::Dict<std::string, c10::IValue> checkpoint;            // like torch.save's dict
//   checkpoint.insert("epoch", 5);
//   checkpoint.insert("model_state_dict", ckpt::client::StateDict(*model));
//   (*client)->Save("team/run/ckpt", checkpoint, {});
//   auto restored = (*client)->Load("team/run/ckpt", {});      // torch.load
//
// Values are c10::IValue trees: tensors, lists, tuples, dicts with string or
// int keys, int, double, bool, string, None, and raw byte leaves (Bytes()).
// No protobuf or gRPC type appears here; errors are absl::Status with the
// server's gRPC code. Thread-safe: calls may run concurrently.
//
// GPU tensors: Save reads them after the work queued on the calling thread's
// current stream (e.g. optimizer.step()) has finished; Load and LoadInto
// write them after that work and return once every copy has landed. The
// Client owns the work SaveAsync leaves running: destroying it (or calling
// Close()) waits for those saves to finish.

#include <ATen/core/ivalue.h>

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/raw_client.h"

namespace torch::nn {
class Module;
}  // namespace torch::nn
namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace ckpt::client {

/// Where restored tensors go, like torch.load's map_location. Exactly one
/// form is used: a device for every tensor (`device`), a mapping of saved
/// device strings to devices ({"cuda:1": "cuda:0"}; unmapped devices stay),
/// or a function from the saved device string to a device.
struct MapLocation {
  /// Every tensor to this device ("cpu", "cuda:0"). Empty: unset.
  std::string device;
  /// Saved device -> device, used when `device` is empty.
  std::map<std::string, std::string> mapping;
  /// Saved device -> device, used when the others are empty.
  std::function<std::string(const std::string& saved_device)> function;

  static MapLocation To(std::string device) { return {std::move(device), {}, {}}; }
  /// The device for a tensor saved on `saved` (no mapping: `saved`).
  std::string Resolve(const std::string& saved) const;
};

/// Renaming of flattened keys on load, applied in order: strip_prefix, then
/// add_prefix, then the explicit map (on the result).
struct RenameRules {
  /// Removed from keys that start with it (DataParallel's "module.").
  std::string strip_prefix;
  /// Prepended to every key.
  std::string add_prefix;
  /// Exact key -> new key.
  std::map<std::string, std::string> map;

  bool empty() const { return strip_prefix.empty() && add_prefix.empty() && map.empty(); }
  std::string Apply(const std::string& key) const;
};

/// Options of Client::Load.
struct TorchLoadOptions {
  /// Version number; 0 uses `tag` (empty: "latest").
  uint64_t version = 0;
  std::string tag;
  /// Glob patterns over flattened keys ("model_state_dict/hidden.*"); only
  /// the selected tensors' bytes cross the wire. Empty: everything.
  std::vector<std::string> patterns;
  /// Device mapping. Default: each tensor to the device it was saved on
  /// (FailedPrecondition suggesting map_location if that device is missing).
  MapLocation map_location;
  /// Applied to the keys of state_dicts: dicts whose values are all tensors
  /// and whose keys are all strings, at the root or right under it (a
  /// training checkpoint's "model_state_dict"); other keys are kept. By
  /// LoadInto, to the keys under its `prefix`. Default: none.
  RenameRules rename;
  /// Deadline of the whole load; zero: none.
  absl::Duration timeout = absl::ZeroDuration();
};

/// What load_state_dict did not match, like PyTorch's _IncompatibleKeys.
struct IncompatibleKeys {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

/// A raw byte leaf (TorchScript archive, tokenizer, config file) inside a
/// value tree.
c10::IValue Bytes(std::string data);
/// Whether `value` is a byte leaf made by Bytes() or restored by Load.
bool IsBytes(const c10::IValue& value);
/// The bytes of a byte leaf. InvalidArgument if it is not one.
absl::StatusOr<std::string> GetBytes(const c10::IValue& value);

/// The connected client.
class Client {
 public:
  /// Connects to `target` (HOST:PORT). Unavailable if the server does not
  /// answer within options.connect_timeout.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& target,
                                                         const ClientOptions& options);
  /// Waits for the async saves still in flight (Close()), then closes the
  /// connection. A save against an unreachable server waits as long as its
  /// SaveOptions::timeout allows (none by default: set one to bound this).
  /// Must not run on a thread that SaveAsync started (e.g. from a progress
  /// callback).
  ~Client();

  /// Waits until every async save in flight has finished (its future is
  /// ready) and frees the snapshot buffers. Later SaveAsync calls resolve at
  /// once with FailedPrecondition ("client is closed"); the other calls keep
  /// working until the client is destroyed. Idempotent; thread-safe.
  void Close();

  /// torch.save: saves `value` as the next version of `name`. CPU tensors
  /// stream straight from their memory (non-contiguous ones are made
  /// contiguous one at a time); GPU tensors through pinned staging buffers.
  /// Returns once the version is durable.
  absl::StatusOr<SaveResult> Save(const std::string& name, const c10::IValue& value,
                                  const SaveOptions& options);

  /// Saves asynchronously: returns once every tensor has been copied to host
  /// memory (the snapshot), so the caller may change them; the future gives
  /// the commit result. The upload runs on a thread the Client owns: the
  /// Client may be destroyed before the future is ready (its destructor
  /// waits for the upload, so the version is not lost), and the future stays
  /// valid after that. After Close(): FailedPrecondition.
  /// The snapshot goes into one host buffer (page-locked when a tensor is on
  /// a GPU) that the Client keeps once the upload is done and reuses for the
  /// next SaveAsync that fits in it: from the second save on, the stall is
  /// a copy into memory already mapped, shared by up to 4 threads (host
  /// tensors; device ones are copied on the calling thread, ordered on its
  /// current CUDA stream). Host tensors start being copied into an idle
  /// buffer (the smallest that fitted the last new one) while the value is
  /// still being walked; a value that outgrew it, or holds device tensors,
  /// is copied again, whole, into one that fits (that save stalls for the
  /// copy twice). At most two idle buffers are kept (a save in flight and
  /// the next); ReleaseSnapshotBuffers() or Close() frees them.
  std::future<absl::StatusOr<SaveResult>> SaveAsync(const std::string& name,
                                                    const c10::IValue& value,
                                                    const SaveOptions& options);

  /// Frees the snapshot buffers SaveAsync keeps for reuse (those of saves
  /// still in flight are kept until they finish). Thread-safe.
  void ReleaseSnapshotBuffers();

  /// Bytes of the snapshot buffers kept for the next SaveAsync.
  uint64_t snapshot_buffer_bytes() const;

  /// torch.load: the value tree of a version, tensors on the devices the
  /// map_location gives.
  absl::StatusOr<c10::IValue> Load(const std::string& name, const TorchLoadOptions& options);

  /// Restores a state_dict saved under `prefix` ("" if the version's root is
  /// the state_dict, "model_state_dict" inside a training checkpoint)
  /// straight into `module`'s existing parameters and buffers, in place: no
  /// second copy of the model. strict: FailedPrecondition listing missing and
  /// unexpected keys; otherwise they are returned. Shape or dtype mismatch is
  /// InvalidArgument naming the key.
  absl::StatusOr<IncompatibleKeys> LoadInto(const std::string& name, torch::nn::Module& module,
                                            const std::string& prefix, bool strict,
                                            const TorchLoadOptions& options);

  /// The same into a state_dict's existing tensors (like torch.distributed.
  /// checkpoint.load): each matching tensor is filled in place.
  absl::StatusOr<IncompatibleKeys> LoadInto(const std::string& name,
                                            c10::Dict<std::string, at::Tensor>& state_dict,
                                            const std::string& prefix, bool strict,
                                            const TorchLoadOptions& options);

  /// The protocol-level client this one is built on.
  RawClient& raw() { return *raw_; }

  /// Lineage: "NAME@VERSION" of the version this client last loaded (Load
  /// or LoadInto); empty before any. A Save or SaveAsync without
  /// SaveOptions::parent records it as the new version's parent, as a job
  /// that resumed from it would (set SaveOptions::parent to say otherwise,
  /// e.g. a warm start). Thread-safe.
  std::string last_loaded() const;

 private:
  explicit Client(std::unique_ptr<RawClient> raw);
  void Loaded(const VersionInfo& version);
  SaveOptions WithParent(const SaveOptions& options) const;

  mutable std::mutex lineage_mu_;
  std::string last_loaded_;
  struct AsyncSaves;  // the threads of SaveAsync in flight

  std::unique_ptr<RawClient> raw_;
  // Declared after raw_ (destroyed first); the destructor joins its threads
  // before either goes away.
  std::unique_ptr<AsyncSaves> async_;
};

// ---------------------------------------------------------------- modules

/// module.state_dict(): parameters, then buffers, then children recursively,
/// with PyTorch's dotted names ("hidden.weight", "bn.running_mean"). Tensors
/// are detached views of the module's own tensors (no copy).
c10::Dict<std::string, at::Tensor> StateDict(const torch::nn::Module& module);

/// module.load_state_dict(state_dict, strict): copies each matching tensor
/// into the module's existing tensor (in place, under no_grad). Shape or
/// dtype mismatch: InvalidArgument naming the key (nothing is copied then).
/// strict and keys differ: FailedPrecondition listing missing and unexpected
/// keys (nothing copied). Otherwise returns them.
absl::StatusOr<IncompatibleKeys> LoadStateDict(torch::nn::Module& module,
                                               const c10::Dict<std::string, at::Tensor>& state,
                                               bool strict);
/// The same from a generic dict (as Load returns); non-tensor values are
/// InvalidArgument.
absl::StatusOr<IncompatibleKeys> LoadStateDict(torch::nn::Module& module, const c10::IValue& state,
                                               bool strict);

/// optimizer.state_dict() in PyTorch's layout: {"state": {index: {...}},
/// "param_groups": [{hyperparameters..., "params": [indices]}]} for SGD,
/// Adam, AdamW, Adagrad and RMSprop (Unimplemented for others). Parameter
/// indices count through the groups in order, as PyTorch does.
absl::StatusOr<c10::IValue> OptimizerStateDict(const torch::optim::Optimizer& optimizer);

/// optimizer.load_state_dict(state): restores hyperparameters and per-
/// parameter state. InvalidArgument if groups or parameter counts or state
/// shapes do not match.
absl::Status LoadOptimizerStateDict(torch::optim::Optimizer& optimizer, const c10::IValue& state);

// ---------------------------------------------------------------- checkpoints

/// A training checkpoint like the tutorial's: {"epoch", "loss",
/// "<model name>": state_dict, ..., "<optimizer name>": state_dict, ...,
/// extras...}.
struct TrainingCheckpoint {
  int64_t epoch = 0;
  double loss = 0;
  /// Key -> module, e.g. {"model_state_dict", &model} or {"modelA_state_dict", &a}.
  std::vector<std::pair<std::string, torch::nn::Module*>> models;
  std::vector<std::pair<std::string, torch::optim::Optimizer*>> optimizers;
  /// Any other entries (int, float, string, tensors...).
  std::vector<std::pair<std::string, c10::IValue>> extras;
};

/// Saves a training checkpoint (step/epoch metadata from options and
/// checkpoint.epoch).
absl::StatusOr<SaveResult> SaveTrainingCheckpoint(Client& client, const std::string& name,
                                                  const TrainingCheckpoint& checkpoint,
                                                  SaveOptions options);

/// Restores a training checkpoint into the given modules (in place) and
/// optimizers; fills epoch, loss and extras. strict applies to the models.
absl::Status LoadTrainingCheckpoint(Client& client, const std::string& name,
                                    TrainingCheckpoint& checkpoint, bool strict,
                                    const TorchLoadOptions& options);

}  // namespace ckpt::client

#endif  // CKPT_CLIENT_CLIENT_H_
