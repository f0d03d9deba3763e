#include "server/pending_saves.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"

namespace ckpt::server {
namespace {

// The version's spec: the union of the parts' root dicts, in rank order.
absl::StatusOr<storage::CommitSpec> MergeParts(const std::string& name, uint32_t world_size,
                                               std::vector<storage::StagedPart*> parts,
                                               uint32_t max_chunk_bytes) {
  storage::CommitSpec spec;
  spec.name = name;
  spec.world_size = world_size;
  Node root;
  root.kind = NodeKind::kDict;
  spec.tree.push_back(root);
  std::set<std::string> tags;
  std::sort(
      parts.begin(), parts.end(),
      [](const storage::StagedPart* a, const storage::StagedPart* b) { return a->rank < b->rank; });
  for (storage::StagedPart* part : parts) {
    spec.tree[0].size += part->tree[0].size;
    spec.tree.insert(spec.tree.end(), std::make_move_iterator(part->tree.begin() + 1),
                     std::make_move_iterator(part->tree.end()));
    tags.insert(part->tags.begin(), part->tags.end());
    spec.metadata.insert(part->metadata.begin(), part->metadata.end());
  }
  const storage::StagedPart& first = *parts.front();
  spec.step = first.step;
  spec.epoch = first.epoch;
  spec.parent = first.parent;
  spec.tags.assign(tags.begin(), tags.end());
  absl::Status valid = ValidateTree(spec.tree, max_chunk_bytes);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("parts do not merge into one tree: ", valid.message()));
  }
  return spec;
}

absl::Status PartsTimedOut(absl::string_view name, size_t arrived, uint32_t world_size,
                           absl::Duration timeout) {
  return absl::DeadlineExceededError(
      absl::StrCat("only ", arrived, " of ", world_size, " parts of a save of '", name,
                   "' arrived within ", absl::FormatDuration(timeout), "; nothing was saved"));
}

absl::Status PartCancelled(uint32_t rank, uint32_t world_size, absl::string_view name) {
  return absl::AbortedError(absl::StrCat("rank ", rank, " of a ", world_size, "-part save of '",
                                         Excerpt(name),
                                         "' was cancelled; the save is "
                                         "abandoned and nothing was saved"));
}

absl::Status PartAbandoned(uint32_t rank, uint32_t world_size, absl::string_view name,
                           const absl::Status& why) {
  return absl::AbortedError(
      absl::StrCat("rank ", rank, " of a ", world_size, "-part save of '", Excerpt(name),
                   "' ended before its part was in (", absl::StatusCodeToString(why.code()), ": ",
                   Excerpt(why.message(), 256), "); the save is abandoned and nothing was saved"));
}

}  // namespace

PendingSaves::PendingSaves(storage::Store* store, uint32_t max_chunk_bytes, absl::Duration timeout)
    : store_(store),
      shared_(store->shared_saves()),
      max_chunk_bytes_(max_chunk_bytes),
      timeout_(timeout) {
  sweeper_ = std::thread([this] { SweepLoop(); });
}

PendingSaves::~PendingSaves() { Shutdown(); }

void PendingSaves::Shutdown() {
  std::map<std::pair<std::string, std::string>, Entry> entries;
  std::map<SharedKey, SharedEntry> shared;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    entries.swap(entries_);
    shared.swap(shared_entries_);
  }
  cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  const absl::Status down =
      absl::UnavailableError("server shutting down; multi-part save abandoned");
  for (auto& [key, entry] : entries) Fail(entry.parts, down);
  const absl::Status unknown = absl::UnavailableError(
      "server shutting down while it commits this multi-part save; whether it was committed "
      "is unknown: list the versions");
  for (auto& [key, entry] : shared) {
    // Its other parts may be at other servers: the whole save ends (unless
    // this server is committing it).
    if (!entry.committing) shared_->Abandon(entry.ticket, down).IgnoreError();
    for (SavePart& part : entry.parts) {
      if (part.waiter) {
        part.waiter->Deliver(entry.committing ? unknown : down);
        part.waiter->Unref();
        part.waiter = nullptr;
      }
    }
  }
}

size_t PendingSaves::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size() + shared_entries_.size();
}

absl::Status PendingSaves::AddPart(const std::string& name, const std::string& save_id,
                                   uint32_t world_size, SavePart part) {
  if (shared_ != nullptr) return AddSharedPart(name, save_id, world_size, std::move(part));
  Entry ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("server shutting down");
    auto key = std::make_pair(name, save_id);
    CKPT_RETURN_IF_ERROR(CheckEndedLocked(key, part.begun));
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      Entry entry;
      entry.name = name;
      entry.world_size = world_size;
      entry.deadline = absl::Now() + timeout_;
      it = entries_.emplace(key, std::move(entry)).first;
    }
    Entry& entry = it->second;
    const uint32_t rank = part.content.rank;
    if (entry.world_size != world_size) {
      return storage::PartWorldSizeMismatch(name, save_id, entry.world_size, rank, world_size);
    }
    if (entry.parts.count(rank)) return storage::PartAlreadySent(name, save_id, rank);
    if (part.waiter) part.waiter->Ref();
    entry.parts.emplace(rank, std::move(part));
    if (entry.parts.size() < entry.world_size) return absl::OkStatus();
    ready = std::move(entry);
    entries_.erase(it);
  }
  CommitEntry(std::move(ready));
  return absl::OkStatus();
}

void PendingSaves::CommitEntry(Entry entry) {
  std::vector<storage::StagedPart*> parts;
  std::vector<storage::Upload*> uploads;
  for (auto& [rank, part] : entry.parts) {
    parts.push_back(&part.content);
    uploads.push_back(part.upload.get());
  }
  absl::StatusOr<VersionInfo> result;
  absl::StatusOr<storage::CommitSpec> spec =
      MergeParts(entry.name, entry.world_size, parts, max_chunk_bytes_);
  if (spec.ok()) {
    result = store_->Commit(*std::move(spec), uploads);
  } else {
    result = spec.status();
  }
  for (auto& [rank, part] : entry.parts) {
    if (part.waiter) {
      part.waiter->Deliver(result);
      part.waiter->Unref();
      part.waiter = nullptr;
    }
  }
}

void PendingSaves::Fail(std::map<uint32_t, SavePart>& parts, const absl::Status& status) {
  for (auto& [rank, part] : parts) {
    if (part.waiter) {
      part.waiter->Deliver(status);
      part.waiter->Unref();
      part.waiter = nullptr;
    }
  }
}

void PendingSaves::CancelPart(SaveWaiter* waiter) {
  if (shared_ != nullptr && CancelSharedPart(waiter)) return;
  Entry abandoned;
  uint32_t cancelled_rank = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end() && found == entries_.end(); ++it) {
      for (auto& [rank, part] : it->second.parts) {
        if (part.waiter != waiter) continue;
        part.waiter = nullptr;
        cancelled_rank = rank;
        found = it;
        break;
      }
    }
    if (found == entries_.end()) return;
    abandoned = std::move(found->second);
    entries_.erase(found);
  }
  waiter->Unref();
  Fail(abandoned.parts, PartCancelled(cancelled_rank, abandoned.world_size, abandoned.name));
}

absl::Status PendingSaves::CheckEndedLocked(const std::pair<std::string, std::string>& key,
                                            uint64_t begun) {
  auto it = ended_.find(key);
  // A stream that began after the save ended is a new save (the record
  // stays for the older ones).
  if (it == ended_.end() || begun > it->second.sequence) return absl::OkStatus();
  return it->second.status;
}

void PendingSaves::RememberEndedLocked(const std::pair<std::string, std::string>& key,
                                       const absl::Status& status) {
  if (ended_.size() >= kMaxEnded && ended_.count(key) == 0) {
    auto oldest = std::min_element(ended_.begin(), ended_.end(), [](const auto& a, const auto& b) {
      return a.second.sequence < b.second.sequence;
    });
    ended_.erase(oldest);
  }
  ended_[key] = Ended{Sequence(), status, absl::Now() + timeout_};
}

bool PendingSaves::AbandonSave(const std::string& name, const std::string& save_id, uint64_t begun,
                               uint32_t rank, uint32_t world_size, const absl::Status& why) {
  const absl::Status status = PartAbandoned(rank, world_size, name, why);
  Entry abandoned;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return false;
    auto key = std::make_pair(name, save_id);
    // A stream of a save that already ended (abandoned, timed out) fails
    // late: the save under that save_id now is another one.
    if (!CheckEndedLocked(key, begun).ok()) return false;
    RememberEndedLocked(key, status);
    // Parts of it staged in a shared store through this server: the sweeper
    // ends the save there (the other servers' parts learn it by polling).
    for (auto& [shared_key, entry] : shared_entries_) {
      if (std::get<0>(shared_key) != name || std::get<1>(shared_key) != save_id) continue;
      if (!entry.cancel.has_value() && !entry.committing) entry.cancel = status;
    }
    auto it = entries_.find(key);
    if (it != entries_.end()) {
      abandoned = std::move(it->second);
      entries_.erase(it);
    }
  }
  cv_.notify_all();
  Fail(abandoned.parts, status);
  return true;
}

void PendingSaves::SweepLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    // Saves staged in a shared store learn their outcome by polling it.
    cv_.wait_for(lock, std::chrono::milliseconds(shared_entries_.empty() ? 500 : 50));
    if (!shared_entries_.empty() && !stopping_) {
      lock.unlock();
      PollShared();
      lock.lock();
    }
    const absl::Time now = absl::Now();
    for (auto it = ended_.begin(); it != ended_.end();) {
      it = it->second.until <= now ? ended_.erase(it) : std::next(it);
    }
    std::vector<Entry> expired;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.deadline <= now) {
        // Its late parts, and the failures of its streams, belong to it.
        RememberEndedLocked(it->first, PartsTimedOut(it->second.name, it->second.parts.size(),
                                                     it->second.world_size, timeout_));
        expired.push_back(std::move(it->second));
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    if (expired.empty()) continue;
    lock.unlock();
    for (Entry& entry : expired) {
      Fail(entry.parts, PartsTimedOut(entry.name, entry.parts.size(), entry.world_size, timeout_));
    }
    lock.lock();
  }
}

// ---------------------------------------------------------------------------
// Parts meeting in a shared store.

absl::Status PendingSaves::AddSharedPart(const std::string& name, const std::string& save_id,
                                         uint32_t world_size, SavePart part) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("server shutting down");
    CKPT_RETURN_IF_ERROR(CheckEndedLocked(std::make_pair(name, save_id), part.begun));
  }
  CKPT_ASSIGN_OR_RETURN(
      storage::SaveTicket ticket,
      shared_->Stage(name, save_id, world_size, timeout_, part.content, *part.upload));
  // The store holds the part now; only its upload waits here.
  part.content.tree = Tree();
  part.memory.Reset();
  SharedKey key(name, save_id, ticket.round);
  bool stopping = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping = stopping_;
    if (!stopping) {
      if (part.waiter) part.waiter->Ref();
      SharedEntry& entry = shared_entries_[key];
      // Abandoned while it was being staged: the sweeper ends it in the
      // store (unless this part completes it: then the store decides).
      if (absl::Status ended = CheckEndedLocked(std::make_pair(name, save_id), part.begun);
          !ended.ok() && !entry.cancel.has_value() && !ticket.commit) {
        entry.cancel = ended;
      }
      entry.ticket = ticket;
      entry.give_up = absl::Now() + 2 * timeout_ + absl::Minutes(1);
      entry.committing = entry.committing || ticket.commit;
      entry.parts.push_back(std::move(part));
    }
  }
  if (stopping) {
    // Shut down while staging: nobody here will poll for it.
    if (!ticket.commit) {
      const absl::Status down =
          absl::UnavailableError("server shutting down; multi-part save abandoned");
      shared_->Abandon(ticket, down).IgnoreError();
      return down;
    }
    // Claimed: the other ranks wait for this commit.
    absl::StatusOr<VersionInfo> outcome = CommitShared(ticket, world_size);
    if (outcome.ok()) shared_->Committed(*part.upload);
    CKPT_RETURN_IF_ERROR(outcome.status());
    if (part.waiter) part.waiter->Deliver(outcome);
    return absl::OkStatus();
  }
  cv_.notify_all();
  if (ticket.commit) Resolve(key, CommitShared(ticket, world_size));
  return absl::OkStatus();
}

absl::StatusOr<VersionInfo> PendingSaves::CommitShared(const storage::SaveTicket& ticket,
                                                       uint32_t world_size) {
  absl::StatusOr<VersionInfo> outcome;
  absl::StatusOr<storage::CollectedSave> collected = shared_->Collect(ticket);
  if (!collected.ok()) {
    outcome = collected.status();
  } else {
    std::vector<storage::StagedPart*> parts;
    for (storage::StagedPart& part : collected->parts) parts.push_back(&part);
    std::vector<storage::Upload*> uploads;
    for (auto& upload : collected->uploads) uploads.push_back(upload.get());
    absl::StatusOr<storage::CommitSpec> spec =
        MergeParts(ticket.name, world_size, parts, max_chunk_bytes_);
    outcome = spec.ok() ? store_->Commit(*std::move(spec), uploads)
                        : absl::StatusOr<VersionInfo>(spec.status());
  }
  // Unrecorded (the cluster went away), the other servers' parts end with
  // Unavailable once the claim is stale: the outcome is unknown to them.
  shared_->Finish(ticket, outcome).IgnoreError();
  return outcome;
}

void PendingSaves::Resolve(const SharedKey& key, const absl::StatusOr<VersionInfo>& outcome) {
  SharedEntry entry;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = shared_entries_.find(key);
    if (it == shared_entries_.end()) return;
    entry = std::move(it->second);
    shared_entries_.erase(it);
  }
  for (SavePart& part : entry.parts) {
    if (outcome.ok()) shared_->Committed(*part.upload);
    if (part.waiter) {
      part.waiter->Deliver(outcome);
      part.waiter->Unref();
      part.waiter = nullptr;
    }
  }
}

void PendingSaves::PollShared() {
  struct Polled {
    SharedKey key;
    storage::SaveTicket ticket;
    absl::Time give_up;
    std::vector<std::shared_ptr<storage::Upload>> uploads;
    std::optional<absl::Status> cancel;
  };
  std::vector<Polled> polled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, entry] : shared_entries_) {
      if (entry.committing) continue;  // its outcome comes from this server
      Polled p{key, entry.ticket, entry.give_up, {}, std::move(entry.cancel)};
      entry.cancel.reset();
      for (SavePart& part : entry.parts) p.uploads.push_back(part.upload);
      polled.push_back(std::move(p));
    }
  }
  for (Polled& p : polled) {
    if (p.cancel.has_value()) {
      absl::StatusOr<bool> ended = shared_->Abandon(p.ticket, *p.cancel);
      if (ended.ok() && *ended) {
        Resolve(p.key, *p.cancel);
        continue;
      }
    }
    for (auto& upload : p.uploads) shared_->KeepAlive(*upload).IgnoreError();
    absl::StatusOr<storage::SaveState> state = shared_->Poll(p.ticket);
    if (!state.ok()) {
      // The cluster may be back by the next poll; not for ever.
      if (absl::Now() > p.give_up) Resolve(p.key, state.status());
      continue;
    }
    if (state->outcome.has_value()) {
      Resolve(p.key, *state->outcome);
    } else if (state->expired) {
      const absl::Status late =
          PartsTimedOut(p.ticket.name, state->staged, state->world_size, timeout_);
      absl::StatusOr<bool> ended = shared_->Abandon(p.ticket, late);
      if (ended.ok() && *ended) Resolve(p.key, late);
    }
  }
}

bool PendingSaves::CancelSharedPart(SaveWaiter* waiter) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool found = false;
    for (auto& [key, entry] : shared_entries_) {
      for (SavePart& part : entry.parts) {
        if (part.waiter != waiter) continue;
        // Its upload stays until the outcome is known (the save may be
        // committing elsewhere); the sweeper ends the save in the store (no
        // RADOS call on this gRPC thread).
        part.waiter = nullptr;
        if (!entry.cancel.has_value()) {
          entry.cancel =
              PartCancelled(part.content.rank, entry.ticket.world_size, std::get<0>(key));
        }
        found = true;
        break;
      }
      if (found) break;
    }
    if (!found) return false;
  }
  cv_.notify_all();
  waiter->Unref();
  return true;
}

}  // namespace ckpt::server
