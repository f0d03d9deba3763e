#include "client/staging.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace ckpt::client::internal {

PinnedPair::PinnedPair(c10::Device device, size_t bytes) : device_(device), bytes_(bytes) {
  c10::impl::VirtualGuardImpl impl(device.type());
  for (Slot& slot : slots_) {
    slot.host = at::empty({static_cast<int64_t>(bytes)},
                          at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    slot.stream = impl.getStreamFromGlobalPool(device);
  }
}

void PinnedPair::Wait(Slot& slot) {
  if (!slot.busy) return;
  slot.stream->synchronize();
  slot.busy = false;
}

DeviceSource::DeviceSource(at::Tensor tensor, size_t chunk_bytes)
    : bytes_(tensor.contiguous().view({-1}).view(at::kByte)),
      pair_(tensor.device(), chunk_bytes) {}

void DeviceSource::Start(PinnedPair::Slot& slot, uint64_t offset, size_t length) {
  c10::StreamGuard guard(*slot.stream);
  slot.host.narrow(0, 0, static_cast<int64_t>(length))
      .copy_(bytes_.narrow(0, static_cast<int64_t>(offset), static_cast<int64_t>(length)),
             /*non_blocking=*/true);
  slot.offset = offset;
  slot.length = length;
  slot.busy = true;
}

absl::Status DeviceSource::Read(uint64_t offset, absl::Span<uint8_t> out) {
  const uint64_t total = static_cast<uint64_t>(bytes_.numel());
  if (offset + out.size() > total || out.size() > pair_.capacity()) {
    return absl::InternalError(absl::StrCat("device read [", offset, ", +", out.size(),
                                            ") outside a tensor of ", total, " bytes"));
  }
  try {
    PinnedPair::Slot* hit = nullptr;
    for (int i = 0; i < 2; ++i) {
      PinnedPair::Slot& s = pair_.slot(i);
      if (s.offset == offset && s.length >= out.size()) hit = &s;
    }
    if (hit == nullptr) {
      hit = &pair_.slot(next_);
      next_ ^= 1;
      pair_.Wait(*hit);
      Start(*hit, offset, out.size());
    }
    pair_.Wait(*hit);
    std::memcpy(out.data(), hit->host.data_ptr(), out.size());
    // Prefetch what is most likely read next: the following chunk.
    const uint64_t ahead = offset + out.size();
    if (ahead < total) {
      PinnedPair::Slot& other = (hit == &pair_.slot(0)) ? pair_.slot(1) : pair_.slot(0);
      if (other.offset != ahead) {
        pair_.Wait(other);
        Start(other, ahead, std::min<uint64_t>(out.size(), total - ahead));
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("device to host copy: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status DeviceUploader::Write(const at::Tensor& dst, uint64_t offset,
                                   absl::string_view bytes) {
  try {
    at::Tensor flat = dst.view({-1}).view(at::kByte);
    for (size_t done = 0; done < bytes.size();) {
      PinnedPair::Slot& slot = pair_.slot(next_);
      next_ ^= 1;
      pair_.Wait(slot);  // the copy that last used this buffer has landed
      const size_t len = std::min(pair_.capacity(), bytes.size() - done);
      std::memcpy(slot.host.data_ptr(), bytes.data() + done, len);
      c10::StreamGuard guard(*slot.stream);
      flat.narrow(0, static_cast<int64_t>(offset + done), static_cast<int64_t>(len))
          .copy_(slot.host.narrow(0, 0, static_cast<int64_t>(len)), /*non_blocking=*/true);
      slot.busy = true;
      done += len;
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("host to device copy: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

void DeviceUploader::Finish() {
  pair_.Wait(pair_.slot(0));
  pair_.Wait(pair_.slot(1));
}

}  // namespace ckpt::client::internal
