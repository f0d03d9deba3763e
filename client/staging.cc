#include "client/staging.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace ckpt::client::internal {
namespace {

// c10::Event::synchronize() exists from LibTorch 2.x on; 1.x can only query.
template <typename E, typename = void>
struct HasSynchronize : std::false_type {};
template <typename E>
struct HasSynchronize<E, std::void_t<decltype(std::declval<const E&>().synchronize())>>
    : std::true_type {};

template <typename E>
void SynchronizeEvent(const E& event) {
  if constexpr (HasSynchronize<E>::value) {
    event.synchronize();
  } else {
    // Only a CUDA build of LibTorch 1.x gets here (Debian's is CPU-only).
    while (!event.query()) std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

at::Tensor PinnedBytes(size_t bytes) {
  return at::empty({static_cast<int64_t>(bytes)},
                   at::TensorOptions().dtype(at::kByte).pinned_memory(true));
}

// c10::Error (CUDA errors included) without its C++ backtrace; anything
// else LibTorch or the standard library throws, as is.
std::string ErrorText(const std::exception& e) {
  if (const auto* error = dynamic_cast<const c10::Error*>(&e)) {
    return error->what_without_backtrace();
  }
  return e.what();
}

}  // namespace

// ---------------------------------------------------------------- CallerStreams

CallerStreams::CallerStreams() {
  try {
    if (!at::hasCUDA()) return;
    const int n = static_cast<int>(at::detail::getCUDAHooks().getNumGPUs());
    c10::impl::VirtualGuardImpl impl(c10::kCUDA);
    for (int i = 0; i < n; ++i) {
      cuda_.push_back(impl.getStream(c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i))));
    }
  } catch (const std::exception&) {
    cuda_.clear();  // no usable CUDA: nothing to order against
  }
}

c10::Stream CallerStreams::Get(c10::Device device) const {
  if (device.is_cuda() && device.has_index() && device.index() < static_cast<int>(cuda_.size())) {
    return cuda_[device.index()];
  }
  c10::impl::VirtualGuardImpl impl(device.type());
  return impl.getStream(device);
}

// ---------------------------------------------------------------- SaveStaging

SaveStaging::SaveStaging(c10::Device device, c10::Stream stream)
    : device_(device), stream_(stream) {}

absl::StatusOr<std::shared_ptr<SaveStaging>> SaveStaging::Create(c10::Device device,
                                                                 c10::Stream caller) {
  try {
    c10::impl::VirtualGuardImpl impl(device.type());
    std::shared_ptr<SaveStaging> staging(
        new SaveStaging(device, impl.getStreamFromGlobalPool(device)));
    // The event is recorded now, on the caller's thread, on the stream that
    // was current when Save was called: it covers the caller's queued
    // kernels and the .contiguous() copies made for this save.
    staging->caller_ready_.emplace(device.type());
    staging->caller_ready_->record(caller);
    staging->caller_ready_->block(staging->stream_);
    for (Slot& slot : staging->slots_) slot.done.emplace(device.type());
    return staging;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("staging for ", device.str(), ": ", ErrorText(e)));
  }
}

SaveStaging::~SaveStaging() {
  for (Slot& slot : slots_) {
    try {
      Wait(slot);
    } catch (...) {
      // A CUDA error here was (or will be) reported by the call that hit it.
    }
  }
}

void SaveStaging::Wait(Slot& slot) {
  if (!slot.busy) return;
  SynchronizeEvent(*slot.done);
  slot.busy = false;
}

SaveStaging::Slot& SaveStaging::Victim(const Slot* keep) {
  Slot* victim = nullptr;
  for (Slot& slot : slots_) {
    if (&slot == keep) continue;
    if (victim == nullptr || slot.last_use < victim->last_use) victim = &slot;
  }
  return *victim;
}

void SaveStaging::Start(Slot& slot, const void* owner, const at::Tensor& bytes, uint64_t offset,
                        size_t length) {
  Wait(slot);  // the copy that last used this buffer has landed
  slot.owner = nullptr;
  if (static_cast<size_t>(slot.host.defined() ? slot.host.numel() : 0) < length) {
    slot.host = at::Tensor();
    slot.host = PinnedBytes(length);  // sized by the negotiated chunk size
  }
  c10::StreamGuard guard(stream_);
  slot.host.narrow(0, 0, static_cast<int64_t>(length))
      .copy_(bytes.narrow(0, static_cast<int64_t>(offset), static_cast<int64_t>(length)),
             /*non_blocking=*/true);
  slot.done->record(stream_);
  slot.busy = true;
  slot.owner = owner;
  slot.offset = offset;
  slot.length = length;
  slot.last_use = ++clock_;
}

absl::Status SaveStaging::Read(const void* owner, const at::Tensor& bytes, const std::string& name,
                               uint64_t offset, absl::Span<uint8_t> out) {
  if (out.empty()) return absl::OkStatus();
  const uint64_t total = static_cast<uint64_t>(bytes.numel());
  std::lock_guard<std::mutex> lock(mu_);
  try {
    Slot* hit = nullptr;
    for (Slot& slot : slots_) {
      if (slot.owner == owner && slot.offset == offset && slot.length == out.size()) hit = &slot;
    }
    if (hit == nullptr) {
      hit = &Victim(nullptr);
      Start(*hit, owner, bytes, offset, out.size());
    }
    Wait(*hit);
    std::memcpy(out.data(), hit->host.data_ptr(), out.size());
    hit->last_use = ++clock_;
    // Prefetch what is most likely read next: the following chunk.
    const uint64_t ahead = offset + out.size();
    if (ahead < total) {
      const size_t length = static_cast<size_t>(std::min<uint64_t>(out.size(), total - ahead));
      bool have = false;
      for (const Slot& slot : slots_) {
        have = have || (slot.owner == owner && slot.offset == ahead && slot.length == length);
      }
      if (!have) Start(Victim(hit), owner, bytes, ahead, length);
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("tensor '", name, "': device to host copy of bytes [",
                                            offset, ", +", out.size(), ") on ", device_.str(), ": ",
                                            ErrorText(e)));
  }
  return absl::OkStatus();
}

void SaveStaging::Release(const void* owner) {
  std::lock_guard<std::mutex> lock(mu_);
  for (Slot& slot : slots_) {
    if (slot.owner != owner) continue;
    try {
      Wait(slot);
    } catch (...) {
      // Reported by the Read that issued the copy, or by a later one.
    }
    slot.owner = nullptr;
  }
}

size_t SaveStaging::pinned_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t total = 0;
  for (const Slot& slot : slots_) total += slot.host.defined() ? slot.host.numel() : 0;
  return total;
}

// ---------------------------------------------------------------- DeviceSource

DeviceSource::DeviceSource(at::Tensor contiguous, std::string name,
                           std::shared_ptr<SaveStaging> staging)
    : bytes_(contiguous.view({-1}).view(at::kByte)),
      name_(std::move(name)),
      staging_(std::move(staging)) {}

DeviceSource::~DeviceSource() { staging_->Release(this); }

absl::Status DeviceSource::Read(uint64_t offset, absl::Span<uint8_t> out) {
  const uint64_t total = static_cast<uint64_t>(bytes_.numel());
  if (offset > total || out.size() > total - offset) {
    return absl::InternalError(absl::StrCat("tensor '", name_, "': device read [", offset, ", +",
                                            out.size(), ") outside its ", total, " bytes"));
  }
  return staging_->Read(this, bytes_, name_, offset, out);
}

// ---------------------------------------------------------------- DeviceUploader

DeviceUploader::DeviceUploader(c10::Device device, c10::Stream stream)
    : device_(device), stream_(stream) {}

absl::StatusOr<std::unique_ptr<DeviceUploader>> DeviceUploader::Create(c10::Device device,
                                                                       c10::Stream caller,
                                                                       size_t buffer_bytes) {
  try {
    c10::impl::VirtualGuardImpl impl(device.type());
    std::unique_ptr<DeviceUploader> uploader(
        new DeviceUploader(device, impl.getStreamFromGlobalPool(device)));
    for (Slot& slot : uploader->slots_) {
      slot.host = PinnedBytes(buffer_bytes);
      slot.done.emplace(device.type());
    }
    // Kernels the caller queued before the load may still read or write the
    // destinations (or the memory a fresh allocation reuses): copies start
    // after them.
    uploader->caller_ready_.emplace(device.type());
    uploader->caller_ready_->record(caller);
    uploader->caller_ready_->block(uploader->stream_);
    return uploader;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("staging for ", device.str(), ": ", ErrorText(e)));
  }
}

DeviceUploader::~DeviceUploader() {
  for (Slot& slot : slots_) {
    try {
      Wait(slot);
    } catch (...) {
      // Reported by Write or Finish; nothing more to do while unwinding.
    }
  }
}

void DeviceUploader::Wait(Slot& slot) {
  if (!slot.busy) return;
  SynchronizeEvent(*slot.done);
  slot.busy = false;
}

absl::Status DeviceUploader::Write(const at::Tensor& dst, const std::string& name, uint64_t offset,
                                   absl::string_view bytes) {
  last_name_ = name;
  try {
    at::Tensor flat = dst.view({-1}).view(at::kByte);
    const size_t capacity = static_cast<size_t>(slots_[0].host.numel());
    for (size_t written = 0; written < bytes.size();) {
      Slot& slot = slots_[next_];
      next_ ^= 1;
      Wait(slot);  // the copy that last used this buffer has landed
      const size_t len = std::min(capacity, bytes.size() - written);
      std::memcpy(slot.host.data_ptr(), bytes.data() + written, len);
      c10::StreamGuard guard(stream_);
      flat.narrow(0, static_cast<int64_t>(offset + written), static_cast<int64_t>(len))
          .copy_(slot.host.narrow(0, 0, static_cast<int64_t>(len)), /*non_blocking=*/true);
      slot.done->record(stream_);
      slot.busy = true;
      written += len;
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("tensor '", name, "': host to device copy at byte ",
                                            offset, " on ", device_.str(), ": ", ErrorText(e)));
  }
  return absl::OkStatus();
}

absl::Status DeviceUploader::Finish() {
  try {
    Wait(slots_[0]);
    Wait(slots_[1]);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("tensor '", last_name_, "': host to device copy on ",
                                            device_.str(), ": ", ErrorText(e)));
  }
  return absl::OkStatus();
}

}  // namespace ckpt::client::internal
