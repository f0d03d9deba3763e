#include "client/client.h"

#include <torch/nn/module.h>

#include <atomic>
#include <list>
#include <mutex>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/torch_tree.h"
#include "common/names.h"
#include "common/status_macros.h"

namespace ckpt::client {

// Every SaveAsync upload runs on a thread kept here: finished ones are
// joined by the next SaveAsync, the others by Close().
struct Client::AsyncSaves {
  struct Task {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu;  // guards closed and tasks
  bool closed = false;
  std::list<Task> tasks;
  // Held for the whole of Close(): a second Close() returns only once the
  // first has joined every thread.
  std::mutex closing;
  // Snapshot buffers reused across saves.
  internal::SnapshotBuffers snapshots;
};

Client::Client(std::unique_ptr<RawClient> raw)
    : raw_(std::move(raw)), async_(std::make_unique<AsyncSaves>()) {}

Client::~Client() { Close(); }

void Client::Close() {
  std::lock_guard<std::mutex> closing(async_->closing);
  std::list<AsyncSaves::Task> tasks;
  {
    std::lock_guard<std::mutex> lock(async_->mu);
    async_->closed = true;
    tasks.swap(async_->tasks);
  }
  for (AsyncSaves::Task& task : tasks) task.thread.join();
  async_->snapshots.Close();
}

void Client::ReleaseSnapshotBuffers() { async_->snapshots.Release(); }

uint64_t Client::snapshot_buffer_bytes() const { return async_->snapshots.idle_bytes(); }

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& target,
                                                        const ClientOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RawClient> raw, RawClient::Connect(target, options));
  return std::unique_ptr<Client>(new Client(std::move(raw)));
}

std::string Client::last_loaded() const {
  std::lock_guard<std::mutex> lock(lineage_mu_);
  return last_loaded_;
}

void Client::Loaded(const VersionInfo& version) {
  std::lock_guard<std::mutex> lock(lineage_mu_);
  last_loaded_ = absl::StrCat(version.name, "@", version.version);
}

SaveOptions Client::WithParent(const SaveOptions& options) const {
  SaveOptions out = options;
  if (out.parent.empty()) out.parent = last_loaded();
  return out;
}

absl::StatusOr<SaveResult> Client::Save(const std::string& name, const c10::IValue& value,
                                        const SaveOptions& options) {
  CKPT_ASSIGN_OR_RETURN(internal::FlatValue flat, internal::Flatten(value, /*snapshot=*/false));
  return raw_->Save(name, flat.input, WithParent(options));
}

std::future<absl::StatusOr<SaveResult>> Client::SaveAsync(const std::string& name,
                                                          const c10::IValue& value,
                                                          const SaveOptions& options) {
  // The snapshot happens here, on the caller's thread: once this returns the
  // caller may change its tensors.
  auto flat = std::make_shared<absl::StatusOr<internal::FlatValue>>(
      internal::Flatten(value, /*snapshot=*/true, &async_->snapshots));
  std::promise<absl::StatusOr<SaveResult>> promise;
  std::future<absl::StatusOr<SaveResult>> future = promise.get_future();
  if (!flat->ok()) {
    promise.set_value(flat->status());
    return future;
  }
  std::list<AsyncSaves::Task> finished;
  {
    std::lock_guard<std::mutex> lock(async_->mu);
    if (async_->closed) {
      promise.set_value(absl::FailedPreconditionError(
          absl::StrCat("cannot save '", name, "' asynchronously: the client is closed")));
      return future;
    }
    for (auto it = async_->tasks.begin(); it != async_->tasks.end();) {
      auto next = std::next(it);
      if (it->done->load()) finished.splice(finished.end(), async_->tasks, it);
      it = next;
    }
    auto done = std::make_shared<std::atomic<bool>>(false);
    // The thread uses raw_, which outlives it: Close() joins it first.
    std::thread thread([raw = raw_.get(), snapshots = &async_->snapshots, name,
                        options = WithParent(options), flat, done,
                        promise = std::move(promise)]() mutable {
      absl::StatusOr<SaveResult> result = raw->Save(name, (*flat)->input, options);
      // The snapshot's buffer goes back (or away, after Close) before the
      // future is ready.
      snapshots->Give(std::move((*flat)->snapshot));
      flat.reset();
      promise.set_value(std::move(result));
      done->store(true);
    });
    async_->tasks.push_back({std::move(thread), std::move(done)});
  }
  for (AsyncSaves::Task& task : finished) task.thread.join();
  return future;
}

absl::StatusOr<c10::IValue> Client::Load(const std::string& name, const TorchLoadOptions& options) {
  LoadOptions raw_options;
  raw_options.version = options.version;
  raw_options.tag = options.tag;
  raw_options.patterns = options.patterns;
  raw_options.timeout = options.timeout;
  internal::IValueSink sink(options.map_location);
  CKPT_RETURN_IF_ERROR(raw_->Load(name, raw_options, &sink));
  Loaded(sink.version());
  return sink.Build(options.rename);
}

namespace {

std::string ShapeText(c10::IntArrayRef sizes) {
  return ckpt::ShapeText(absl::Span<const int64_t>(sizes.data(), sizes.size()));
}

}  // namespace

absl::StatusOr<IncompatibleKeys> Client::LoadInto(const std::string& name,
                                                  torch::nn::Module& module,
                                                  const std::string& prefix, bool strict,
                                                  const TorchLoadOptions& options) {
  // StateDict() holds views of the module's own tensors: filling them fills
  // the module.
  c10::Dict<std::string, at::Tensor> state = StateDict(module);
  return LoadInto(name, state, prefix, strict, options);
}

absl::StatusOr<IncompatibleKeys> Client::LoadInto(const std::string& name,
                                                  c10::Dict<std::string, at::Tensor>& state_dict,
                                                  const std::string& prefix, bool strict,
                                                  const TorchLoadOptions& options) {
  std::vector<std::pair<std::string, at::Tensor>> targets;
  for (const auto& entry : state_dict) targets.emplace_back(entry.key(), entry.value());
  std::map<std::string, at::Tensor> by_key(targets.begin(), targets.end());

  LoadOptions raw_options;
  raw_options.version = options.version;
  raw_options.tag = options.tag;
  raw_options.timeout = options.timeout;
  raw_options.patterns = options.patterns;
  if (!prefix.empty() && raw_options.patterns.empty()) {
    raw_options.patterns = {EscapeGlob(prefix)};
  }
  IncompatibleKeys result;
  internal::IValueSink sink(options.map_location);
  const std::string root = prefix.empty() ? "" : prefix + "/";
  // Before any byte arrives: match keys, check shapes and dtypes, and point
  // each matching node at the module's own tensor.
  sink.choose_destinations = [&](const Tree& tree, const std::vector<std::string>& keys,
                                 std::vector<at::Tensor>* chosen) -> absl::Status {
    std::set<std::string> seen;
    std::vector<std::string> mismatches;
    for (size_t i = 0; i < tree.size(); ++i) {
      if (tree[i].kind != NodeKind::kTensor) continue;
      if (keys[i].compare(0, root.size(), root) != 0) continue;
      std::string relative = keys[i].substr(root.size());
      if (relative.find('/') != std::string::npos) continue;  // nested deeper
      const std::string key = options.rename.Apply(relative);
      auto it = by_key.find(key);
      if (it == by_key.end()) {
        result.unexpected_keys.push_back(key);
        continue;
      }
      seen.insert(key);
      const at::Tensor& dst = it->second;
      auto dtype = internal::ToDType(dst.scalar_type());
      if (!dtype.ok() || *dtype != tree[i].tensor.dtype ||
          std::vector<int64_t>(dst.sizes().begin(), dst.sizes().end()) != tree[i].tensor.shape) {
        mismatches.push_back(
            absl::StrCat("size or dtype mismatch for ", key, ": copying a param with shape ",
                         ShapeText(tree[i].tensor.shape), " ", DTypeName(tree[i].tensor.dtype),
                         " from checkpoint, the shape in current model is ", ShapeText(dst.sizes()),
                         " ", dtype.ok() ? std::string(DTypeName(*dtype)) : "?"));
        continue;
      }
      (*chosen)[i] = dst;
    }
    for (const auto& [key, tensor] : targets) {
      if (!seen.count(key)) result.missing_keys.push_back(key);
    }
    if (!mismatches.empty()) {
      return absl::InvalidArgumentError(absl::StrJoin(mismatches, "; "));
    }
    if (strict && (!result.missing_keys.empty() || !result.unexpected_keys.empty())) {
      return absl::FailedPreconditionError(
          absl::StrCat("Error(s) in loading state_dict: Missing key(s): [",
                       absl::StrJoin(result.missing_keys, ", "), "]. Unexpected key(s): [",
                       absl::StrJoin(result.unexpected_keys, ", "), "]"));
    }
    return absl::OkStatus();
  };
  sink.skip_unchosen = true;  // unmatched tensors need no memory
  // In-place writes into parameters must not be recorded by autograd.
  torch::NoGradGuard no_grad;
  absl::Status status = raw_->Load(name, raw_options, &sink);
  // Also after a failure: no copy may still be writing the caller's tensors.
  status.Update(sink.FinishDeviceCopies());
  CKPT_RETURN_IF_ERROR(status);
  Loaded(sink.version());
  return result;
}

}  // namespace ckpt::client
