#ifndef CKPT_INTEROP_TORCH_PT_H_
#define CKPT_INTEROP_TORCH_PT_H_

// PyTorch's zip-based checkpoint format (torch.save, PyTorch >= 1.6):
//
//   <dir>/data.pkl      the pickled object; tensors refer to storages by
//                       persistent id ('storage', torch.FloatStorage, '0',
//                       'cpu', numel)
//   <dir>/data/<key>    each storage's raw little-endian bytes (STORED)
//   <dir>/version, <dir>/byteorder, ...
//
// The writer lays records out like torch.save (data aligned to 64 bytes)
// but puts data.pkl last, so that Python bytes objects, whose pickled size
// depends on their content, can be streamed into it. It writes each tensor
// as its own contiguous storage (tensors that shared a storage in Python
// come back as separate tensors), dicts whose values are all tensors as
// collections.OrderedDict (state_dicts) and other dicts as dict, tensors
// with requires_grad as nn.Parameter, uint16/32/64 as PyTorch 2.3+ does
// (_rebuild_tensor_v3 over an UntypedStorage).

#include <memory>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/types.h"
#include "interop/checkpoint.h"

namespace ckpt::interop {

/// Reads a torch.save zip archive. See ReadCheckpoint.
absl::StatusOr<ImportedCheckpoint> ReadPt(absl::Span<const uint8_t> file,
                                          const ReadOptions& options);

/// A streaming .pt writer for `tree`. See NewCheckpointWriter.
absl::StatusOr<std::unique_ptr<CheckpointWriter>> NewPtWriter(const Tree& tree, OutputFile* out);

}  // namespace ckpt::interop

#endif  // CKPT_INTEROP_TORCH_PT_H_
