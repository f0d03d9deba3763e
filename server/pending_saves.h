#ifndef CKPT_SERVER_PENDING_SAVES_H_
#define CKPT_SERVER_PENDING_SAVES_H_

// Multi-part saves: the ranks of one training job each stream their part of
// one version; the version commits, atomically, when the last part is in.
// Over a store one server owns (RocksDB) the parts meet here, in memory;
// over a store servers share (RADOS: Store::shared_saves) they meet in the
// store, so that they may reach different servers: each server stages the
// parts it received, the one completing the set commits, and the others
// poll the store for the outcome.

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/types.h"
#include "server/memory_budget.h"
#include "storage/store.h"

namespace ckpt::server {

/// A stream waiting for the outcome of its multi-part save.
class SaveWaiter {
 public:
  virtual ~SaveWaiter() = default;
  /// Receives the commit result (or why the save failed). Called at most once.
  virtual void Deliver(const absl::StatusOr<VersionInfo>& result) = 0;
  /// Keeps the waiter alive while PendingSaves holds it.
  virtual void Ref() = 0;
  virtual void Unref() = 0;
};

/// One rank's complete contribution.
struct SavePart {
  storage::StagedPart content;  ///< Rank, tree (a dict at its root), fields.
  /// Shared: a server sharing its store renews its lease while the part
  /// waits.
  std::shared_ptr<storage::Upload> upload;
  SaveWaiter* waiter = nullptr;  ///< Ref'd by AddPart.
  /// The tree's share of the server's memory budget, released with the part.
  MemoryReservation memory;
  /// PendingSaves::Sequence() when the rank's stream began (its SaveBegin).
  uint64_t begun = 0;
};

/// Registry of multi-part saves in progress. Thread-safe.
class PendingSaves {
 public:
  /// Parts wait at most `timeout` for the rest of their save.
  PendingSaves(storage::Store* store, uint32_t max_chunk_bytes, absl::Duration timeout);
  /// Shutdown().
  ~PendingSaves();

  /// Fails every waiting part with Unavailable and refuses new parts.
  /// Idempotent.
  void Shutdown();

  /// Adds a part of save (name, save_id) of `world_size` parts. The waiter
  /// gets the result once all parts are in (committed on the calling thread
  /// if this part is the last, here or, over a shared store, on any
  /// server). AlreadyExists if the rank already sent its part,
  /// InvalidArgument if world_size disagrees with earlier parts; a shared
  /// store's errors while staging.
  absl::Status AddPart(const std::string& name, const std::string& save_id, uint32_t world_size,
                       SavePart part);

  /// The stream of `waiter`'s part was cancelled: its rank is gone, so the
  /// whole save is abandoned at once. Every part of it is dropped (their
  /// memory and uploads released) and the other ranks get Aborted. No-op if
  /// `waiter` waits for nothing (its save already resolved).
  void CancelPart(SaveWaiter* waiter);

  /// A number that orders the start of a rank's stream against abandoned
  /// saves: taken when the stream's SaveBegin arrives (SavePart::begun).
  uint64_t Sequence() { return sequence_.fetch_add(1, std::memory_order_acq_rel) + 1; }

  /// Rank `rank`'s stream of save (name, save_id), begun at `begun`
  /// (Sequence()), ended before its part was in (cancelled, refused,
  /// broken): the save cannot complete. The parts waiting for it here get
  /// Aborted, saying why, at once (over a shared store: those staged
  /// through this server, once the sweeper has ended the save there, which
  /// the other servers then learn by polling); parts of streams that began
  /// before this get it when they arrive, until --part-timeout from now. A
  /// stream that begins later starts a new save with that save_id; a
  /// stream of a save that already ended (abandoned or timed out since it
  /// began) abandons nothing.
  /// Returns whether it abandoned the save (false for a stream of a save
  /// that already ended, or while shutting down).
  bool AbandonSave(const std::string& name, const std::string& save_id, uint64_t begun,
                   uint32_t rank, uint32_t world_size, const absl::Status& why);

  /// Number of saves waiting for parts.
  size_t size();

 private:
  struct Entry {
    std::string name;
    uint32_t world_size = 0;
    absl::Time deadline;
    std::map<uint32_t, SavePart> parts;
  };
  // A save staged in a shared store, with the parts this server received.
  struct SharedEntry {
    storage::SaveTicket ticket;
    std::vector<SavePart> parts;
    absl::Time give_up;       // when failing polls end it
    bool committing = false;  // this server commits it: not polled
    // A rank here was cancelled: the sweeper ends the save with this.
    std::optional<absl::Status> cancel;
  };
  using SharedKey = std::tuple<std::string, std::string, std::string>;
  // A save that ended without its parts (AbandonSave, a timeout): what a
  // part of a stream that began before that gets.
  struct Ended {
    uint64_t sequence;  // Sequence() when it ended
    absl::Status status;
    absl::Time until;
  };
  // At most this many ended saves are remembered (the oldest go first).
  static constexpr size_t kMaxEnded = 4096;

  void CommitEntry(Entry entry);
  // The status a part of a stream that began at `begun` gets if its save
  // ended since (abandoned, timed out); OK otherwise (a stream begun later
  // is a new save).
  absl::Status CheckEndedLocked(const std::pair<std::string, std::string>& key, uint64_t begun);
  // Records that save `key` ended with `status` (abandoned, timed out), for
  // --part-timeout; at most kMaxEnded records, the oldest dropped.
  void RememberEndedLocked(const std::pair<std::string, std::string>& key,
                           const absl::Status& status);
  static void Fail(std::map<uint32_t, SavePart>& parts, const absl::Status& status);
  void SweepLoop();

  absl::Status AddSharedPart(const std::string& name, const std::string& save_id,
                             uint32_t world_size, SavePart part);
  // Commits a save whose ticket won the claim, from the parts in the store.
  absl::StatusOr<VersionInfo> CommitShared(const storage::SaveTicket& ticket, uint32_t world_size);
  // Gives the outcome to the entry's waiters and drops it.
  void Resolve(const SharedKey& key, const absl::StatusOr<VersionInfo>& outcome);
  // Polls the shared store for the outcome of every shared entry.
  void PollShared();
  bool CancelSharedPart(SaveWaiter* waiter);

  storage::Store* store_;
  storage::SharedSaves* shared_;
  uint32_t max_chunk_bytes_;
  absl::Duration timeout_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::pair<std::string, std::string>, Entry> entries_;
  std::map<SharedKey, SharedEntry> shared_entries_;
  std::map<std::pair<std::string, std::string>, Ended> ended_;
  std::atomic<uint64_t> sequence_{0};
  std::thread sweeper_;
};

}  // namespace ckpt::server

#endif  // CKPT_SERVER_PENDING_SAVES_H_
