#ifndef CKPT_STORAGE_SHARED_SAVES_H_
#define CKPT_STORAGE_SHARED_SAVES_H_

// Multi-part saves whose parts reach different servers sharing one store
// (RADOS): each server stages the parts it received in the store; the one
// whose part completes the set commits the version from every staged part
// and records the outcome there, where the other servers find it. A store
// that one server owns (RocksDB) has none: its server meets the parts in
// memory.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/types.h"

namespace ckpt::storage {

class Upload;

/// What one rank sent as its part of a multi-part save, besides its chunks.
struct StagedPart {
  uint32_t rank = 0;
  Tree tree;  ///< Root is a dict.
  int64_t step = 0;
  int64_t epoch = 0;
  std::map<std::string, std::string> metadata;
  std::vector<std::string> tags;
  std::string parent;
};

/// A multi-part save staged in the store, as one server sees it.
struct SaveTicket {
  std::string name;
  std::string save_id;
  /// Tells apart successive saves that reuse one save_id.
  std::string round;
  /// Parts of the save.
  uint32_t world_size = 0;
  /// Whether the caller's part completed the set and the caller won the
  /// right to commit it (exactly one server does).
  bool commit = false;
};

/// Where a staged save stands.
struct SaveState {
  /// The commit's result, or why the save failed; empty while pending.
  std::optional<absl::StatusOr<VersionInfo>> outcome;
  /// Parts staged so far (of world_size).
  uint32_t staged = 0;
  uint32_t world_size = 0;
  /// Pending past the deadline Stage set: nobody commits it any more.
  bool expired = false;
};

/// The parts of a save, for the server that commits it.
struct CollectedSave {
  std::vector<StagedPart> parts;  ///< In rank order.
  /// Stand-ins for the uploads of every part (whichever server received
  /// it), to pass to Store::Commit.
  std::vector<std::unique_ptr<Upload>> uploads;
};

/// InvalidArgument: rank `rank` of save `save_id` of `name` says
/// `world_size` parts where the save has `expected`.
absl::Status PartWorldSizeMismatch(absl::string_view name, absl::string_view save_id,
                                   uint32_t expected, uint32_t rank, uint32_t world_size);

/// AlreadyExists: rank `rank` of save `save_id` of `name` already sent its
/// part.
absl::Status PartAlreadySent(absl::string_view name, absl::string_view save_id, uint32_t rank);

/// The store's meeting point of multi-part saves (Store::shared_saves).
/// Thread-safe.
class SharedSaves {
 public:
  virtual ~SharedSaves() = default;

  /// Stages `part` of save (name, save_id) of `world_size` parts. Its chunks
  /// are in `upload` (sealed here), which the caller keeps alive until the
  /// save's outcome is known. The first part sets the save's deadline,
  /// `timeout` from now. InvalidArgument if world_size disagrees with the
  /// save's; AlreadyExists if the rank already sent its part. A save_id
  /// whose save ended may be used again: that is a new save.
  virtual absl::StatusOr<SaveTicket> Stage(absl::string_view name, absl::string_view save_id,
                                           uint32_t world_size, absl::Duration timeout,
                                           const StagedPart& part, Upload& upload) = 0;

  /// For the ticket that commits: every staged part and their uploads.
  virtual absl::StatusOr<CollectedSave> Collect(const SaveTicket& ticket) = 0;

  /// Records the outcome of the commit of `ticket` for the other servers.
  virtual absl::Status Finish(const SaveTicket& ticket,
                              const absl::StatusOr<VersionInfo>& outcome) = 0;

  /// Where the save stands. A save whose committing server stopped
  /// answering for longer than an upload lease ends with Unavailable.
  virtual absl::StatusOr<SaveState> Poll(const SaveTicket& ticket) = 0;

  /// Fails the save with `why` unless it is already complete. Returns
  /// whether `why` became its outcome.
  virtual absl::StatusOr<bool> Abandon(const SaveTicket& ticket, const absl::Status& why) = 0;

  /// Keeps a waiting part's upload alive (renews its lease when due).
  virtual absl::Status KeepAlive(Upload& upload) = 0;

  /// Once the save committed: the chunks of `upload`, a part's own, belong
  /// to the version; its lease is dropped. (After a failure, destroying
  /// the upload leaves its chunks to garbage collection.)
  virtual void Committed(Upload& upload) = 0;
};

}  // namespace ckpt::storage

#endif  // CKPT_STORAGE_SHARED_SAVES_H_
