#include "server/pending_saves.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/names.h"

namespace ckpt::server {

PendingSaves::PendingSaves(storage::Store* store, uint32_t max_chunk_bytes, absl::Duration timeout)
    : store_(store), max_chunk_bytes_(max_chunk_bytes), timeout_(timeout) {
  sweeper_ = std::thread([this] { SweepLoop(); });
}

PendingSaves::~PendingSaves() { Shutdown(); }

void PendingSaves::Shutdown() {
  std::map<std::pair<std::string, std::string>, Entry> entries;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    entries.swap(entries_);
  }
  cv_.notify_all();
  if (sweeper_.joinable()) sweeper_.join();
  for (auto& [key, entry] : entries) {
    Fail(entry, absl::UnavailableError("server shutting down; multi-part save abandoned"));
  }
}

size_t PendingSaves::size() {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.size();
}

absl::Status PendingSaves::AddPart(const std::string& name, const std::string& save_id,
                                   uint32_t world_size, SavePart part) {
  Entry ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("server shutting down");
    auto key = std::make_pair(name, save_id);
    auto it = entries_.find(key);
    if (it == entries_.end()) {
      Entry entry;
      entry.name = name;
      entry.world_size = world_size;
      entry.deadline = absl::Now() + timeout_;
      it = entries_.emplace(key, std::move(entry)).first;
    }
    Entry& entry = it->second;
    if (entry.world_size != world_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("save '", save_id, "' of '", name, "' has world_size ", entry.world_size,
                       " but rank ", part.rank, " says ", world_size));
    }
    if (entry.parts.count(part.rank)) {
      return absl::AlreadyExistsError(absl::StrCat("rank ", part.rank, " of save '", save_id,
                                                   "' of '", name, "' already sent its part"));
    }
    if (part.waiter) part.waiter->Ref();
    const uint32_t rank = part.rank;
    entry.parts.emplace(rank, std::move(part));
    if (entry.parts.size() < entry.world_size) return absl::OkStatus();
    ready = std::move(entry);
    entries_.erase(it);
  }
  CommitEntry(std::move(ready));
  return absl::OkStatus();
}

void PendingSaves::CommitEntry(Entry entry) {
  // The version's root is the union of the parts' root dicts, in rank order.
  storage::CommitSpec spec;
  spec.name = entry.name;
  spec.world_size = entry.world_size;
  Node root;
  root.kind = NodeKind::kDict;
  spec.tree.push_back(root);
  std::set<std::string> tags;
  std::vector<storage::Upload*> uploads;
  for (auto& [rank, part] : entry.parts) {
    spec.tree[0].size += part.tree[0].size;
    spec.tree.insert(spec.tree.end(), std::make_move_iterator(part.tree.begin() + 1),
                     std::make_move_iterator(part.tree.end()));
    tags.insert(part.tags.begin(), part.tags.end());
    spec.metadata.insert(part.metadata.begin(), part.metadata.end());
    uploads.push_back(part.upload.get());
  }
  const SavePart& first = entry.parts.begin()->second;
  spec.step = first.step;
  spec.epoch = first.epoch;
  spec.parent = first.parent;
  spec.tags.assign(tags.begin(), tags.end());
  absl::StatusOr<VersionInfo> result;
  absl::Status valid = ValidateTree(spec.tree, max_chunk_bytes_);
  if (!valid.ok()) {
    result = absl::InvalidArgumentError(
        absl::StrCat("parts do not merge into one tree: ", valid.message()));
  } else {
    result = store_->Commit(std::move(spec), uploads);
  }
  for (auto& [rank, part] : entry.parts) {
    if (part.waiter) {
      part.waiter->Deliver(result);
      part.waiter->Unref();
      part.waiter = nullptr;
    }
  }
}

void PendingSaves::Fail(Entry& entry, const absl::Status& status) {
  for (auto& [rank, part] : entry.parts) {
    if (part.waiter) {
      part.waiter->Deliver(status);
      part.waiter->Unref();
      part.waiter = nullptr;
    }
  }
}

void PendingSaves::CancelPart(SaveWaiter* waiter) {
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
  Fail(abandoned,
       absl::AbortedError(absl::StrCat("rank ", cancelled_rank, " of a ", abandoned.world_size,
                                       "-part save of '", Excerpt(abandoned.name),
                                       "' was cancelled; the save is "
                                       "abandoned and nothing was saved")));
}

void PendingSaves::SweepLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(500));
    const absl::Time now = absl::Now();
    std::vector<Entry> expired;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.deadline <= now) {
        expired.push_back(std::move(it->second));
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
    if (expired.empty()) continue;
    lock.unlock();
    for (Entry& entry : expired) {
      Fail(entry, absl::DeadlineExceededError(
                      absl::StrCat("only ", entry.parts.size(), " of ", entry.world_size,
                                   " parts of a save of '", entry.name, "' arrived within ",
                                   absl::FormatDuration(timeout_), "; nothing was saved")));
    }
    lock.lock();
  }
}

}  // namespace ckpt::server
