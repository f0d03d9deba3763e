#include "client/torch_tree.h"

#include <ATen/ATen.h>
#include <c10/core/DeviceType.h>
#include <torch/custom_class.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/types/span.h"
#include "client/staging.h"
#include "common/status_macros.h"

namespace ckpt::client {
namespace {

// A raw byte leaf inside an IValue tree. Registered as a TorchScript custom
// class so that it can live in IValue containers.
struct BytesHolder : torch::CustomClassHolder {
  explicit BytesHolder(std::string d) : data(std::move(d)) {}
  std::string data;
};

const auto kBytesClass = torch::class_<BytesHolder>("ckpt", "Bytes");

}  // namespace

c10::IValue Bytes(std::string data) {
  return c10::IValue(c10::make_intrusive<BytesHolder>(std::move(data)));
}

bool IsBytes(const c10::IValue& value) {
  if (!value.isCustomClass()) return false;
  return value.type()->str().find("ckpt.Bytes") != std::string::npos;
}

absl::StatusOr<std::string> GetBytes(const c10::IValue& value) {
  if (!IsBytes(value)) return absl::InvalidArgumentError("value is not a byte leaf");
  return value.toCustomClass<BytesHolder>()->data;
}

std::string MapLocation::Resolve(const std::string& saved) const {
  if (!device.empty()) return device;
  if (!mapping.empty()) {
    auto it = mapping.find(saved);
    return it == mapping.end() ? saved : it->second;
  }
  if (function) return function(saved);
  return saved;
}

std::string RenameRules::Apply(const std::string& key) const {
  std::string out = key;
  if (!strip_prefix.empty() && out.compare(0, strip_prefix.size(), strip_prefix) == 0) {
    out = out.substr(strip_prefix.size());
  }
  out = add_prefix + out;
  auto it = map.find(out);
  return it == map.end() ? out : it->second;
}

namespace internal {
namespace {

struct DTypePair {
  c10::ScalarType scalar;
  DType dtype;
};

constexpr DTypePair kDTypes[] = {
    {c10::ScalarType::Float, DType::kFloat32},
    {c10::ScalarType::Double, DType::kFloat64},
    {c10::ScalarType::Half, DType::kFloat16},
    {c10::ScalarType::BFloat16, DType::kBFloat16},
    {c10::ScalarType::Char, DType::kInt8},
    {c10::ScalarType::Short, DType::kInt16},
    {c10::ScalarType::Int, DType::kInt32},
    {c10::ScalarType::Long, DType::kInt64},
    {c10::ScalarType::Byte, DType::kUInt8},
    {c10::ScalarType::Bool, DType::kBool},
    {c10::ScalarType::ComplexFloat, DType::kComplex64},
    {c10::ScalarType::ComplexDouble, DType::kComplex128},
};

// A host tensor whose bytes are its values, in order, where data_ptr()
// points: read in place, or copied with one memcpy.
bool IsPlainHost(const at::Tensor& t) {
  return t.device().is_cpu() && t.is_contiguous() && !t.is_conj() && !t.is_neg();
}

struct PlainCopy {
  uint8_t* dst;
  const uint8_t* src;
  uint64_t bytes;
};

// Performs `copies` on this thread and up to three helpers, each taking an
// equal share of the bytes, a copy split between threads where the shares
// meet: an async save's stall is the snapshot's copy, and one thread copies
// at a fraction of what the memory can do. A share without a thread to be
// had is copied here.
void CopyInParallel(absl::Span<const PlainCopy> copies) {
  constexpr uint64_t kBytesPerThread = uint64_t{16} << 20;
  uint64_t total = 0;
  for (const PlainCopy& c : copies) total += c.bytes;
  const uint64_t cores = std::max(1u, std::thread::hardware_concurrency());
  const uint64_t threads =
      std::max<uint64_t>(1, std::min({cores, uint64_t{4}, total / kBytesPerThread}));
  // Bytes [begin, end) of all the copies, in order.
  auto share = [copies](uint64_t begin, uint64_t end) {
    uint64_t at = 0;  // where a copy starts among all the bytes
    for (size_t i = 0; i < copies.size() && at < end; at += copies[i++].bytes) {
      const PlainCopy& c = copies[i];
      const uint64_t lo = begin > at ? begin - at : 0;
      const uint64_t hi = std::min(end - at, c.bytes);
      if (lo < hi) std::memcpy(c.dst + lo, c.src + lo, hi - lo);
    }
  };
  std::vector<std::thread> helpers;
  helpers.reserve(threads - 1);  // no throw with a thread started
  for (uint64_t t = 0; t + 1 < threads; ++t) {
    const uint64_t begin = total / threads * t, end = total / threads * (t + 1);
    try {
      helpers.emplace_back(share, begin, end);
    } catch (const std::system_error&) {
      share(begin, end);
    }
  }
  share(total / threads * (threads - 1), total);
  for (std::thread& h : helpers) h.join();
}

// Copies a snapshot's plain host tensors into the idle buffer of an earlier
// snapshot while the tree is still being walked: on helper threads as the
// walk queues them, and on the walking thread too once it is done (an async
// save of 20,000 small tensors stalled for the walk, then for the copy).
// It takes the tensors in the walk's order, at the offsets CopySnapshot
// gives them, for as long as each is a plain host tensor that fits; the
// first that is not (a view, a device tensor, one past the buffer's end)
// ends it, and CopySnapshot copies the rest, or everything again into a
// buffer of the right kind and size.
class SnapshotPipeline {
 public:
  static constexpr uint64_t kAlign = 64;
  static uint64_t Aligned(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

  // With an idle pageable buffer of `owner` (see TakeIdlePageable), if it
  // has one (null: none).
  explicit SnapshotPipeline(SnapshotBuffers* owner) : owner_(owner) {
    helpers_.reserve(kMaxThreads - 1);  // no throw with a thread started
    if (owner_ != nullptr) buffer_ = owner_->TakeIdlePageable();
    open_ = buffer_.defined();
    if (open_) {
      base_ = static_cast<uint8_t*>(buffer_.data_ptr());
      capacity_ = static_cast<uint64_t>(buffer_.numel());
    }
  }
  ~SnapshotPipeline() {
    Finish();
    GiveBack();
  }
  SnapshotPipeline(const SnapshotPipeline&) = delete;
  SnapshotPipeline& operator=(const SnapshotPipeline&) = delete;

  // The walk's next tensor (`bytes` of it): its copy is queued if the
  // pipeline still takes tensors. Only reads `t`, which must stay alive
  // until Finish.
  void Offer(const at::Tensor& t, uint64_t bytes) {
    if (!open_) return;
    const uint8_t* src = nullptr;
    try {
      if (bytes > 0 && IsPlainHost(t)) {
        src = static_cast<const uint8_t*>(t.data_ptr());
      }
    } catch (const c10::Error&) {
      src = nullptr;  // CopySnapshot says what is wrong with it
    }
    if ((bytes > 0 && src == nullptr) || offset_ + Aligned(bytes) > capacity_) {
      open_ = false;
      return;
    }
    for (uint64_t at = 0; at < bytes; at += kPieceBytes) {
      const uint64_t n = std::min(kPieceBytes, bytes - at);
      batch_.push_back({base_ + offset_ + at, src + at, n});
      batch_bytes_ += n;
      if (batch_bytes_ >= kBatchBytes) Push(/*may_start_helpers=*/true);
    }
    offset_ += Aligned(bytes);
    copied_bytes_ += bytes;
    ++taken_;
  }

  // Waits for every queued copy, copying on this thread as well. Does not
  // throw.
  void Finish() {
    if (finished_) return;
    finished_ = true;
    Push(/*may_start_helpers=*/false);
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    Work();
    for (std::thread& h : helpers_) h.join();
    if (owner_ != nullptr) owner_->CountCopiedWhileWalking(copied_bytes_);
  }

  // Leading tensors of the walk copied into the buffer (after Finish).
  size_t taken() const { return taken_; }
  uint64_t capacity() const { return capacity_; }
  // The buffer they are in (undefined: none), handed over.
  at::Tensor TakeBuffer() { return std::move(buffer_); }
  // The buffer back to its owner, unused (after Finish).
  void GiveBack() {
    if (buffer_.defined()) owner_->Give(std::move(buffer_));
  }

 private:
  static constexpr uint64_t kBatchBytes = uint64_t{1} << 20;
  static constexpr uint64_t kPieceBytes = uint64_t{16} << 20;
  static constexpr unsigned kMaxThreads = 4;  // helpers and the walking thread

  // Queues the batch. Helpers start as CopyInParallel's threads do: one
  // per 16 MiB queued (a small state is copied by the walking thread at
  // Finish), at most one fewer than the cores and than kMaxThreads. If the
  // queue cannot take the batch, it is copied here.
  void Push(bool may_start_helpers) noexcept {
    if (batch_.empty()) return;
    try {
      {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(std::move(batch_));
      }
      cv_.notify_one();
    } catch (const std::exception&) {
      for (const PlainCopy& c : batch_) std::memcpy(c.dst, c.src, c.bytes);
    }
    batch_.clear();
    queued_bytes_ += batch_bytes_;
    batch_bytes_ = 0;
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    while (may_start_helpers && !no_threads_ &&
           helpers_.size() + 1 < std::min(cores, kMaxThreads) &&
           queued_bytes_ >= kPieceBytes * (helpers_.size() + 1)) {
      try {
        helpers_.emplace_back([this] { Work(); });
      } catch (const std::system_error&) {
        no_threads_ = true;  // copied by the others, or here at Finish
      }
    }
  }

  // Copies queued batches until the walk is done and none is left.
  void Work() noexcept {
    for (;;) {
      std::vector<PlainCopy> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty() || done_; });
        if (queue_.empty()) return;
        batch = std::move(queue_.front());
        queue_.pop_front();
      }
      for (const PlainCopy& c : batch) std::memcpy(c.dst, c.src, c.bytes);
    }
  }

  SnapshotBuffers* owner_;
  at::Tensor buffer_;
  uint8_t* base_ = nullptr;
  uint64_t capacity_ = 0;
  bool open_ = false;
  bool finished_ = false;
  bool no_threads_ = false;
  uint64_t offset_ = 0;
  size_t taken_ = 0;
  uint64_t copied_bytes_ = 0;
  std::vector<PlainCopy> batch_;  // not queued yet
  uint64_t batch_bytes_ = 0;
  uint64_t queued_bytes_ = 0;
  std::vector<std::thread> helpers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::vector<PlainCopy>> queue_;  // guarded by mu_
  bool done_ = false;                         // guarded by mu_
};

std::string KeyText(const NodeKey& key) {
  if (auto* s = std::get_if<std::string>(&key)) return *s;
  if (auto* i = std::get_if<int64_t>(&key)) return absl::StrCat(*i);
  return "";
}

// A node's key path ("model/fc.weight", list items by index), spelled out
// only for messages: a chain of the keys from the root.
struct Path {
  const Path* parent = nullptr;
  const NodeKey* key = nullptr;  // null: the root, or a list item `index`
  size_t index = 0;

  std::string Text() const {
    if (parent == nullptr) return "";
    const std::string up = parent->Text();
    const std::string here = key != nullptr ? KeyText(*key) : absl::StrCat(index);
    return up.empty() ? here : absl::StrCat(up, "/", here);
  }
};

class Flattener {
 public:
  // `pipeline` (snapshot only, may be null) is offered each tensor.
  Flattener(bool snapshot, FlatValue* out, SnapshotPipeline* pipeline = nullptr)
      : snapshot_(snapshot), out_(out), pipeline_(pipeline) {}

  absl::Status Visit(const c10::IValue& v, NodeKey key, const Path& path) {
    Node node;
    node.key = std::move(key);
    if (v.isTensor()) return AddTensor(v.toTensor(), std::move(node), path);
    if (IsBytes(v)) {
      node.kind = NodeKind::kBytes;
      out_->blobs.push_back(v.toCustomClass<BytesHolder>()->data);
      node.data.size = out_->blobs.back().size();
      return Add(std::move(node), -1, static_cast<int>(out_->blobs.size()) - 1);
    }
    if (v.isNone()) {
      node.kind = NodeKind::kNone;
    } else if (v.isBool()) {
      node.kind = NodeKind::kBool;
      node.bool_value = v.toBool();
    } else if (v.isInt()) {
      node.kind = NodeKind::kInt;
      node.int_value = v.toInt();
    } else if (v.isDouble()) {
      node.kind = NodeKind::kFloat;
      node.float_value = v.toDouble();
    } else if (v.isString()) {
      node.kind = NodeKind::kString;
      node.string_value = v.toStringRef();
    } else if (v.isGenericDict()) {
      const c10::impl::GenericDict dict = v.toGenericDict();
      node.kind = NodeKind::kDict;
      node.size = static_cast<uint32_t>(dict.size());
      Reserve(dict.size());
      CKPT_RETURN_IF_ERROR(Add(std::move(node)));
      for (const auto& entry : dict) {
        const c10::IValue& k = entry.key();
        NodeKey child;
        if (k.isString()) {
          child = k.toStringRef();
        } else if (k.isInt()) {
          child = k.toInt();
        } else {
          return absl::InvalidArgumentError(absl::StrCat("dict '", path.Text(),
                                                         "' has a key of type ", k.tagKind(),
                                                         " (only str and int keys)"));
        }
        const Path child_path{&path, &child};
        CKPT_RETURN_IF_ERROR(Visit(entry.value(), child, child_path));
      }
      return absl::OkStatus();
    } else if (v.isList() || v.isTuple()) {
      std::vector<c10::IValue> items;
      if (v.isList()) {
        for (const c10::IValue& item : v.toListRef()) items.push_back(item);
        node.kind = NodeKind::kList;
      } else {
        for (const c10::IValue& item : v.toTupleRef().elements()) items.push_back(item);
        node.kind = NodeKind::kTuple;
      }
      node.size = static_cast<uint32_t>(items.size());
      Reserve(items.size());
      CKPT_RETURN_IF_ERROR(Add(std::move(node)));
      for (size_t i = 0; i < items.size(); ++i) {
        CKPT_RETURN_IF_ERROR(Visit(items[i], {}, Path{&path, nullptr, i}));
      }
      return absl::OkStatus();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("'", path.Text(), "': cannot save a value of type ", v.tagKind()));
    }
    return Add(std::move(node));
  }

 private:
  // Room for a container and its `children` (at least): a state_dict of
  // 20,000 tensors is one allocation per vector instead of fifteen rounds of
  // moving every node to fresh memory; nested containers still grow
  // geometrically.
  void Reserve(size_t children) {
    const size_t wanted = out_->input.tree.size() + 1 + children;
    if (wanted <= out_->input.tree.capacity()) return;
    const size_t n = std::max(wanted, 2 * out_->input.tree.capacity());
    out_->input.tree.reserve(n);
    out_->input.sources.reserve(n);
    out_->input.bytes.reserve(n);
    out_->tensors.reserve(n);
    if (!snapshot_) out_->storages.reserve(n);  // tensors read in place
  }

  absl::Status AddTensor(const at::Tensor& tensor, Node node, const Path& path) {
    if (!tensor.defined()) {
      node.kind = NodeKind::kNone;  // an undefined tensor reads back as None
      return Add(std::move(node));
    }
    if (tensor.is_sparse() || tensor.is_quantized() || tensor.is_meta() || tensor.is_mkldnn()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", path.Text(), "': only dense strided tensors can be saved"));
    }
    auto dtype = ToDType(tensor.scalar_type());
    if (!dtype.ok()) {
      return Annotate(dtype.status(), absl::StrCat("tensor '", path.Text(), "'"));
    }
    node.kind = NodeKind::kTensor;
    node.tensor.dtype = *dtype;
    node.tensor.shape.assign(tensor.sizes().begin(), tensor.sizes().end());
    node.tensor.device = tensor.device().is_cpu() ? "cpu" : tensor.device().str();
    node.tensor.requires_grad = tensor.requires_grad();
    node.data.size = static_cast<uint64_t>(tensor.numel()) * tensor.element_size();
    if (!snapshot_ && !tensor.device().is_cpu() && node.data.size > 0) {
      // Streamed from the device through pinned buffers, chunk by chunk.
      // The .contiguous() copy (if any) is queued on this thread's current
      // stream; the staging is ordered after it in Flatten, once every
      // tensor has been visited.
      try {
        out_->pending.push_back({tensor.detach().resolve_conj().resolve_neg().contiguous(),
                                 path.Text(), out_->input.tree.size()});
      } catch (const c10::Error& e) {
        return absl::InternalError(
            absl::StrCat("tensor '", path.Text(), "': ", e.what_without_backtrace()));
      }
      return Add(std::move(node));
    }
    if (snapshot_) {
      // Copied into the snapshot buffer once every tensor has been visited
      // (its size is known then).
      out_->tensors.push_back(tensor);  // only read (under NoGradGuard)
      if (pipeline_ != nullptr) pipeline_->Offer(tensor, node.data.size);
      return Add(std::move(node));
    }
    at::Tensor host;
    try {
      // A contiguous CPU tensor is read where it is (no detached alias: two
      // allocations per tensor that a save of 20,000 tensors felt); its
      // storage is held, so that its bytes outlive a `.data =` or `set_()`
      // of another thread during the save.
      if (IsPlainHost(tensor)) {
        out_->tensors.push_back(tensor);
        out_->storages.push_back(tensor.storage());
        return Add(std::move(node), static_cast<int>(out_->tensors.size()) - 1, -1);
      }
      // Conjugate and negative views hold their values unresolved.
      at::Tensor plain = tensor.detach().resolve_conj().resolve_neg();
      if (!plain.device().is_cpu()) {
        // A host copy of its own: the caller may change the original now.
        host = at::empty(plain.sizes(), plain.options().device(at::kCPU).requires_grad(false));
        host.copy_(plain);
      } else {
        host = plain.contiguous();
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("tensor '", path.Text(), "': ", e.what_without_backtrace()));
    }
    node.data.size = static_cast<uint64_t>(host.numel()) * host.element_size();
    out_->tensors.push_back(host);
    return Add(std::move(node), static_cast<int>(out_->tensors.size()) - 1, -1);
  }

  absl::Status Add(Node node, int tensor = -1, int blob = -1, DataSource* source = nullptr) {
    out_->input.sources.push_back(source);
    absl::Span<const uint8_t> bytes;
    if (tensor >= 0) {
      const at::Tensor& t = out_->tensors[tensor];
      bytes = {static_cast<const uint8_t*>(t.data_ptr()), node.data.size};
    } else if (blob >= 0) {
      const std::string& b = out_->blobs[blob];
      bytes = {reinterpret_cast<const uint8_t*>(b.data()), b.size()};
    }
    out_->input.tree.push_back(std::move(node));
    out_->input.bytes.push_back(bytes);
    return absl::OkStatus();
  }

  bool snapshot_;
  FlatValue* out_;
  SnapshotPipeline* pipeline_;
};

}  // namespace

absl::StatusOr<DType> ToDType(c10::ScalarType type) {
  for (const auto& p : kDTypes) {
    if (p.scalar == type) return p.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", c10::toString(type), " cannot be saved"));
}

absl::StatusOr<c10::ScalarType> ToScalarType(DType dtype) {
  for (const auto& p : kDTypes) {
    if (p.dtype == dtype) return p.scalar;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", DTypeName(dtype), " is not supported by this LibTorch"));
}

namespace {

// Copies the tensors a snapshot visited (out->tensors, in tensor-node order)
// into one buffer from `buffers` and points the nodes' spans at it.
// The tensors `pipeline` copied already (the leading ones) are not copied
// again when its buffer is of the kind and size needed.
absl::Status CopySnapshot(FlatValue* out, SnapshotBuffers* buffers, SnapshotPipeline* pipeline) {
  using Pipeline = SnapshotPipeline;
  uint64_t total = 0;
  bool on_device = false;
  for (const at::Tensor& t : out->tensors) {
    total += Pipeline::Aligned(static_cast<uint64_t>(t.numel()) * t.element_size());
    on_device = on_device || t.is_cuda();  // page-locked memory is CUDA's
  }
  pipeline->Finish();
  size_t copied = 0;  // leading tensors in out->snapshot already
  if (!on_device && total <= pipeline->capacity()) {
    copied = pipeline->taken();
    out->snapshot = pipeline->TakeBuffer();
  } else {
    pipeline->GiveBack();  // for another save, or this one if it fits after all
  }
  if (!out->snapshot.defined()) {
    SnapshotBuffers fresh;
    try {
      out->snapshot = (buffers != nullptr ? buffers : &fresh)->Take(total, on_device);
    } catch (const c10::Error& e) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "allocating a ", total, "-byte snapshot buffer: ", e.what_without_backtrace()));
    }
  }
  uint8_t* base = static_cast<uint8_t*>(out->snapshot.data_ptr());
  at::NoGradGuard no_grad;
  // Plain copies (contiguous host tensors) are shared with helper threads;
  // the rest (views, device tensors) stays on this thread, whose current
  // CUDA stream orders a device copy after the caller's work.
  std::vector<PlainCopy> plain;
  uint64_t offset = 0;
  size_t k = 0;
  for (size_t i = 0; i < out->input.tree.size(); ++i) {
    const Node& node = out->input.tree[i];
    if (node.kind != NodeKind::kTensor) continue;
    const at::Tensor& t = out->tensors[k++];
    const uint64_t n = node.data.size;
    uint8_t* dst = base + offset;
    try {
      if (n == 0 || k <= copied) {
      } else if (IsPlainHost(t)) {
        plain.push_back({dst, static_cast<const uint8_t*>(t.data_ptr()), n});
      } else {
        // Strided, conjugate/negative views and device tensors: through a
        // view of the buffer (a device copy into page-locked memory).
        at::from_blob(dst, t.sizes(), t.options().device(at::kCPU).requires_grad(false)).copy_(t);
      }
    } catch (const c10::Error& e) {
      if (buffers != nullptr) buffers->Give(std::move(out->snapshot));
      return absl::InternalError(absl::StrCat("tensor '", KeyText(node.key), "' (node ", i,
                                              "): ", e.what_without_backtrace()));
    }
    out->input.bytes[i] = {dst, n};
    offset += Pipeline::Aligned(n);
  }
  CopyInParallel(plain);
  out->tensors.clear();  // the caller's tensors are not needed any more
  return absl::OkStatus();
}

}  // namespace

at::Tensor SnapshotBuffers::Take(uint64_t bytes, bool pinned) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pinned) last_pageable_bytes_ = bytes;
    auto best = idle_.end();
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (it->is_pinned() != pinned || static_cast<uint64_t>(it->numel()) < bytes) continue;
      if (best == idle_.end() || it->numel() < best->numel()) best = it;
    }
    if (best != idle_.end()) {
      at::Tensor buffer = std::move(*best);
      idle_.erase(best);
      return buffer;
    }
  }
  return at::empty({static_cast<int64_t>(std::max<uint64_t>(bytes, 1))},
                   at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
}

at::Tensor SnapshotBuffers::TakeIdlePageable() {
  std::lock_guard<std::mutex> lock(mu_);
  // The smallest that fits the last pageable snapshot, else the largest.
  auto fits = idle_.end(), largest = idle_.end();
  for (auto it = idle_.begin(); it != idle_.end(); ++it) {
    if (it->is_pinned()) continue;
    const uint64_t n = static_cast<uint64_t>(it->numel());
    if (n >= last_pageable_bytes_ && (fits == idle_.end() || it->numel() < fits->numel())) {
      fits = it;
    }
    if (largest == idle_.end() || it->numel() > largest->numel()) largest = it;
  }
  auto best = fits != idle_.end() ? fits : largest;
  if (best == idle_.end()) return at::Tensor();
  at::Tensor buffer = std::move(*best);
  idle_.erase(best);
  return buffer;
}

void SnapshotBuffers::Give(at::Tensor buffer) {
  if (!buffer.defined()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_) return;  // Close()d: freed
  idle_.push_back(std::move(buffer));
  // The largest kIdle stay.
  std::sort(idle_.begin(), idle_.end(),
            [](const at::Tensor& a, const at::Tensor& b) { return a.numel() > b.numel(); });
  if (idle_.size() > kIdle) idle_.resize(kIdle);
}

void SnapshotBuffers::Release() {
  std::vector<at::Tensor> freed;
  std::lock_guard<std::mutex> lock(mu_);
  freed.swap(idle_);
}

void SnapshotBuffers::Close() {
  std::vector<at::Tensor> freed;
  std::lock_guard<std::mutex> lock(mu_);
  closed_ = true;
  freed.swap(idle_);
}

uint64_t SnapshotBuffers::copied_while_walking() {
  std::lock_guard<std::mutex> lock(mu_);
  return copied_while_walking_;
}

void SnapshotBuffers::CountCopiedWhileWalking(uint64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  copied_while_walking_ += bytes;
}

uint64_t SnapshotBuffers::idle_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const at::Tensor& t : idle_) n += static_cast<uint64_t>(t.numel());
  return n;
}

absl::StatusOr<FlatValue> Flatten(const c10::IValue& value, bool snapshot,
                                  SnapshotBuffers* buffers) {
  FlatValue out;
  // Captured before anything is queued: the caller's current streams.
  const CallerStreams caller;
  // Blobs and tensors are referenced by span: the vectors may still grow
  // (and move the blobs' strings) during the walk, so spans are built last.
  // A snapshot into an idle buffer starts copying during the walk.
  std::optional<SnapshotPipeline> pipeline;
  if (snapshot) pipeline.emplace(buffers);
  Flattener flattener(snapshot, &out, pipeline ? &*pipeline : nullptr);
  CKPT_RETURN_IF_ERROR(flattener.Visit(value, {}, Path{}));
  if (snapshot) {
    CKPT_RETURN_IF_ERROR(CopySnapshot(&out, buffers, &*pipeline));
  }
  // Device tensors: one staging per device, ordered after the caller's
  // queued work and the .contiguous() copies just queued.
  std::map<std::string, std::shared_ptr<SaveStaging>> by_device;
  for (FlatValue::PendingSource& p : out.pending) {
    const c10::Device device = p.tensor.device();
    std::shared_ptr<SaveStaging>& staging = by_device[device.str()];
    if (!staging) {
      auto created = SaveStaging::Create(device, caller.Get(device));
      if (!created.ok()) {
        return Annotate(created.status(), absl::StrCat("tensor '", p.name, "'"));
      }
      staging = *std::move(created);
      out.stagings.push_back(staging);
    }
    out.device_sources.push_back(
        std::make_unique<DeviceSource>(std::move(p.tensor), p.name, staging));
    out.input.sources[p.node] = out.device_sources.back().get();
  }
  out.pending.clear();
  // Spans into `blobs` were taken while the vector grew: rebuild them now.
  size_t blob = 0, tensor = 0;
  for (size_t i = 0; i < out.input.tree.size(); ++i) {
    const Node& node = out.input.tree[i];
    if (node.kind == NodeKind::kBytes) {
      const std::string& b = out.blobs[blob++];
      out.input.bytes[i] = {reinterpret_cast<const uint8_t*>(b.data()), b.size()};
    } else if (snapshot) {
      // Spans into the snapshot buffer already.
    } else if (node.kind == NodeKind::kTensor && out.input.sources[i] == nullptr &&
               node.data.size > 0) {
      const at::Tensor& t = out.tensors[tensor++];
      out.input.bytes[i] = {static_cast<const uint8_t*>(t.data_ptr()), node.data.size};
    } else if (node.kind == NodeKind::kTensor && out.input.sources[i] == nullptr) {
      ++tensor;
    }
  }
  return out;
}

// ---------------------------------------------------------------- loading

namespace {

bool DeviceAvailable(const c10::Device& device) {
  if (device.is_cpu()) return true;
  if (device.is_cuda()) {
    try {
      return at::hasCUDA() &&
             device.index() < static_cast<int>(at::detail::getCUDAHooks().getNumGPUs());
    } catch (const c10::Error&) {
      return false;
    }
  }
  return false;
}

}  // namespace

absl::Status IValueSink::OnTree(const VersionInfo& version, const Tree& tree) {
  version_ = version;
  tree_ = tree;
  tensors_.assign(tree.size(), at::Tensor());
  blobs_.assign(tree.size(), std::string());
  host_direct_.assign(tree.size(), false);
  keys_ = FlattenedKeys(tree);
  const std::vector<std::string>& keys = keys_;
  std::vector<at::Tensor> chosen(tree.size());
  if (choose_destinations) CKPT_RETURN_IF_ERROR(choose_destinations(tree, keys, &chosen));
  for (size_t i = 0; i < tree.size(); ++i) {
    const Node& node = tree[i];
    if (node.kind == NodeKind::kBytes) {
      blobs_[i].resize(node.data.size);
      continue;
    }
    if (node.kind != NodeKind::kTensor) continue;
    if (chosen[i].defined()) {
      tensors_[i] = chosen[i];
      host_direct_[i] = chosen[i].device().is_cpu() && chosen[i].is_contiguous();
      continue;
    }
    if (skip_unchosen) continue;
    const std::string target = map_location_.Resolve(node.tensor.device);
    c10::Device device(c10::kCPU);
    try {
      device = c10::Device(target);
    } catch (const c10::Error&) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", keys[i], "': invalid device '", target, "' from map_location"));
    }
    if (!DeviceAvailable(device)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tensor '", keys[i], "' was saved on ", node.tensor.device, " but ", target,
          " is not available here; pass a map_location (e.g. MapLocation::To(\"cpu\") or "
          "{\"",
          node.tensor.device, "\": \"cpu\"})"));
    }
    CKPT_ASSIGN_OR_RETURN(c10::ScalarType scalar, ToScalarType(node.tensor.dtype));
    try {
      tensors_[i] = at::empty(node.tensor.shape, at::TensorOptions().dtype(scalar).device(device));
    } catch (const c10::Error& e) {
      return absl::ResourceExhaustedError(
          absl::StrCat("tensor '", keys[i], "': ", e.what_without_backtrace()));
    }
    host_direct_[i] = device.is_cpu();
  }
  partial_pieces_ = std::none_of(tensors_.begin(), tensors_.end(), [](const at::Tensor& t) {
    return t.defined() && !t.device().is_cpu();
  });
  return absl::OkStatus();
}

absl::Status IValueSink::OnData(size_t node, uint64_t offset, absl::string_view bytes) {
  if (node >= tree_.size()) return absl::InternalError("piece for an unknown node");
  if (tree_[node].kind == NodeKind::kBytes) {
    std::memcpy(blobs_[node].data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  at::Tensor& dst = tensors_[node];
  if (!dst.defined()) return absl::OkStatus();  // not wanted (in-place load skips it)
  if (host_direct_[node]) {
    std::memcpy(static_cast<char*>(dst.data_ptr()) + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  if (!dst.device().is_cpu() && dst.is_contiguous()) {
    auto& uploader = uploaders_[dst.device().str()];
    if (!uploader) {
      // Created on the loading thread, after OnTree's allocations; its
      // stream waits for the caller's stream captured at construction.
      auto created = DeviceUploader::Create(dst.device(), caller_streams_.Get(dst.device()));
      if (!created.ok())
        return Annotate(created.status(), absl::StrCat("tensor '", keys_[node], "'"));
      uploader = *std::move(created);
    }
    return uploader->Write(dst, keys_[node], offset, bytes);
  }
  // A non-contiguous destination: copy the piece through a host tensor into
  // the right byte range.
  try {
    at::Tensor src = at::from_blob(const_cast<char*>(bytes.data()),
                                   {static_cast<int64_t>(bytes.size())}, at::kByte);
    if (dst.is_contiguous()) {
      at::Tensor flat = dst.view({-1}).view(at::kByte);
      flat.narrow(0, static_cast<int64_t>(offset), static_cast<int64_t>(bytes.size())).copy_(src);
    } else {
      // Rare: stage the whole tensor once, copy on the last piece.
      auto& staging = blobs_[node];
      if (staging.empty()) staging.resize(tree_[node].data.size);
      std::memcpy(staging.data() + offset, bytes.data(), bytes.size());
      if (offset + bytes.size() == tree_[node].data.size) {
        at::Tensor whole = at::from_blob(staging.data(), dst.sizes(), dst.scalar_type());
        dst.copy_(whole);
        std::string().swap(staging);
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("tensor '", keys_[node], "': ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

namespace {

// Builds IValues from the pre-order tree.
class Builder {
 public:
  Builder(const Tree& tree, std::vector<at::Tensor>& tensors, std::vector<std::string>& blobs,
          const RenameRules& rename)
      : tree_(tree), tensors_(tensors), blobs_(blobs), rename_(rename) {}

  absl::StatusOr<c10::IValue> Build(size_t* i, int depth) {
    const Node& node = tree_[*i];
    const size_t self = (*i)++;
    switch (node.kind) {
      case NodeKind::kNone:
        return c10::IValue();
      case NodeKind::kBool:
        return c10::IValue(node.bool_value);
      case NodeKind::kInt:
        return c10::IValue(node.int_value);
      case NodeKind::kFloat:
        return c10::IValue(node.float_value);
      case NodeKind::kString:
        return c10::IValue(node.string_value);
      case NodeKind::kTensor: {
        at::Tensor t = tensors_[self];
        if (node.tensor.requires_grad && t.is_floating_point()) t.set_requires_grad(true);
        return c10::IValue(t);
      }
      case NodeKind::kBytes:
        return Bytes(std::move(blobs_[self]));
      case NodeKind::kList:
      case NodeKind::kTuple: {
        std::vector<c10::IValue> items;
        for (uint32_t c = 0; c < node.size; ++c) {
          CKPT_ASSIGN_OR_RETURN(c10::IValue item, Build(i, depth + 1));
          items.push_back(std::move(item));
        }
        if (node.kind == NodeKind::kTuple) return c10::ivalue::Tuple::create(std::move(items));
        return MakeList(std::move(items));
      }
      case NodeKind::kDict: {
        std::vector<std::pair<c10::IValue, c10::IValue>> entries;
        bool all_str = true, all_int = true, all_tensor = node.size > 0;
        for (uint32_t c = 0; c < node.size; ++c) {
          const Node& child = tree_[*i];
          c10::IValue key;
          if (auto* s = std::get_if<std::string>(&child.key)) {
            key = c10::IValue(*s);
            all_int = false;
          } else {
            key = c10::IValue(std::get<int64_t>(child.key));
            all_str = false;
          }
          all_tensor = all_tensor && child.kind == NodeKind::kTensor;
          CKPT_ASSIGN_OR_RETURN(c10::IValue value, Build(i, depth + 1));
          entries.emplace_back(std::move(key), std::move(value));
        }
        if (!all_str && !all_int) {
          return absl::InvalidArgumentError(
              "a dict mixes str and int keys, which LibTorch dicts cannot hold");
        }
        // Rename the keys of state_dicts: the root, or dicts right under it.
        const bool rename = all_str && all_tensor && depth <= 1 && !rename_.empty();
        c10::TypePtr key_type =
            all_int ? c10::TypePtr(c10::IntType::get()) : c10::TypePtr(c10::StringType::get());
        c10::TypePtr value_type =
            all_tensor ? c10::TypePtr(c10::TensorType::get()) : c10::TypePtr(c10::AnyType::get());
        c10::impl::GenericDict dict(key_type, value_type);
        for (auto& [k, v] : entries) {
          if (rename) k = c10::IValue(rename_.Apply(k.toStringRef()));
          dict.insert_or_assign(std::move(k), std::move(v));
        }
        return c10::IValue(dict);
      }
    }
    return absl::InternalError("unknown node kind");
  }

 private:
  static c10::IValue MakeList(std::vector<c10::IValue> items) {
    auto all = [&](auto pred) {
      return !items.empty() && std::all_of(items.begin(), items.end(), pred);
    };
    if (all([](const c10::IValue& v) { return v.isTensor(); })) {
      c10::List<at::Tensor> list;
      for (auto& v : items) list.push_back(v.toTensor());
      return c10::IValue(list);
    }
    if (all([](const c10::IValue& v) { return v.isInt(); })) {
      c10::List<int64_t> list;
      for (auto& v : items) list.push_back(v.toInt());
      return c10::IValue(list);
    }
    if (all([](const c10::IValue& v) { return v.isDouble(); })) {
      c10::List<double> list;
      for (auto& v : items) list.push_back(v.toDouble());
      return c10::IValue(list);
    }
    if (all([](const c10::IValue& v) { return v.isBool(); })) {
      c10::List<bool> list;
      for (auto& v : items) list.push_back(v.toBool());
      return c10::IValue(list);
    }
    c10::impl::GenericList list(c10::AnyType::get());
    for (auto& v : items) list.push_back(std::move(v));
    return c10::IValue(list);
  }

  const Tree& tree_;
  std::vector<at::Tensor>& tensors_;
  std::vector<std::string>& blobs_;
  const RenameRules& rename_;
};

}  // namespace

absl::Status IValueSink::FinishDeviceCopies() {
  absl::Status status;
  for (auto& [device, uploader] : uploaders_) status.Update(uploader->Finish());
  return status;
}

absl::StatusOr<c10::IValue> IValueSink::Build(const RenameRules& rename) {
  if (tree_.empty()) return absl::InternalError("nothing was loaded");
  CKPT_RETURN_IF_ERROR(FinishDeviceCopies());
  Builder builder(tree_, tensors_, blobs_, rename);
  size_t i = 0;
  return builder.Build(&i, 0);
}

}  // namespace internal
}  // namespace ckpt::client
