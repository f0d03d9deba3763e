#include "storage/rocksdb_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace ckpt::storage {

absl::Status FromRocksDb(const rocksdb::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", status.ToString());
  using Code = rocksdb::Status::Code;
  using SubCode = rocksdb::Status::SubCode;
  if (status.subcode() == SubCode::kNoSpace || status.subcode() == SubCode::kSpaceLimit ||
      status.subcode() == SubCode::kMemoryLimit) {
    return absl::ResourceExhaustedError(message);
  }
  switch (status.code()) {
    case Code::kNotFound:
      return absl::NotFoundError(message);
    case Code::kCorruption:
      return absl::DataLossError(message);
    case Code::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case Code::kNotSupported:
      return absl::UnimplementedError(message);
    case Code::kBusy:
    case Code::kTryAgain:
    case Code::kTimedOut:
    case Code::kShutdownInProgress:
      return absl::UnavailableError(message);
    case Code::kAborted:
      return absl::AbortedError(message);
    case Code::kIOError:  // A failing disk is not worth retrying blindly.
    default:
      return absl::InternalError(message);
  }
}

}  // namespace ckpt::storage
