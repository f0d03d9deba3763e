// StoreCore's out-of-line members (disk space, the reserve file, the
// chunk-id allocator, usage accounting) and the read helpers every
// operation of the RocksDB store shares.

#include "storage/store_core.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/errno_status.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "storage/rocksdb_status.h"

namespace ckpt::storage::internal {

namespace fs = std::filesystem;

// ---------------------------------------------------------------------------
// StoreCore

uint64_t StoreCore::WriteHeadroom() const {
  return std::max(options.rocksdb.write_buffer_bytes, options.rocksdb.manifest_write_buffer_bytes);
}

rocksdb::Status StoreCore::Write(const rocksdb::WriteOptions& write_options,
                                 rocksdb::WriteBatch* batch, Room room) {
  const uint64_t needed = RoomNeeded(batch->GetDataSize(), room);
  uint64_t free = FreeSpace();
  if (free < needed) {
    if (room == Room::kMayUseReserve) {
      DropReserve();
      free = FreeSpace();
    }
    if (free < needed) {
      return rocksdb::Status::NoSpace(absl::StrCat(
          "disk full: ", free, " bytes free where the store lives, this write needs ", needed,
          "; nothing was written (",
          room == Room::kNormal              ? "delete versions and run gc, or add space"
          : options.reserved_disk_bytes == 0 ? "free space on that disk"
                                             : "free space on that disk: the reserve is used up",
          ")"));
    }
  }
  rocksdb::Status s = db->Write(write_options, batch);
  if (s.ok() || !(s.IsNoSpace() || s.IsIOError())) return s;
  if (room == Room::kNormal) {
    return db->Resume().ok() ? db->Write(write_options, batch) : s;
  }
  DropReserve();
  const absl::Time deadline = absl::Now() + kRecoveryWait;
  do {
    if (db->Resume().ok()) {
      rocksdb::Status again = db->Write(write_options, batch);
      if (again.ok() || !(again.IsNoSpace() || again.IsIOError())) return again;
      s = again;
    }
    absl::SleepFor(absl::Milliseconds(100));
  } while (absl::Now() < deadline);
  return s;
}

uint64_t StoreCore::RoomNeeded(uint64_t bytes, Room room) const {
  return bytes + (room == Room::kNormal ? WriteHeadroom() : kMinWriteRoom + FlushRoomFor(bytes));
}

uint64_t StoreCore::FlushRoomFor(uint64_t bytes) const {
  uint64_t room = 0;
  for (rocksdb::ColumnFamilyHandle* cf : {default_cf, chunks_cf, refs_cf, manifests_cf, tags_cf}) {
    const uint64_t limit = cf == manifests_cf ? options.rocksdb.manifest_write_buffer_bytes
                                              : options.rocksdb.write_buffer_bytes;
    uint64_t active = limit, all = limit;  // unknown: as if full
    db->GetIntProperty(cf, rocksdb::DB::Properties::kCurSizeActiveMemTable, &active);
    db->GetIntProperty(cf, rocksdb::DB::Properties::kCurSizeAllMemTables, &all);
    // Memtables already waiting for their flush.
    room += all - std::min(all, active);
    // A write takes about twice its batch bytes in a memtable (keys with
    // sequence numbers, skip-list nodes), and RocksDB switches memtables
    // within an eighth of the limit.
    if (active + 2 * bytes + limit / 8 >= limit) room += active + 2 * bytes;
  }
  return room;
}

uint64_t StoreCore::FreeBytes(const std::string& path) {
  struct statvfs st;
  if (statvfs(path.c_str(), &st) != 0) return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

absl::Status StoreCore::CheckDiskSpace(uint64_t bytes) const {
  // Chunks never take the room a commit's metadata write needs (Write), not
  // even with no reserve: the save could not commit, and a concurrent
  // commit would meet the full disk in RocksDB.
  const uint64_t keep = std::max(options.reserved_disk_bytes, WriteHeadroom() + kMinWriteRoom);
  const uint64_t free = FreeSpace();
  if (free >= keep && free - keep >= bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "disk full: ", free, " bytes free where the store lives, a save needs ", bytes, " more and ",
      keep,
      " stay reserved for deletes and gc; nothing was saved (delete versions and run gc, or "
      "add space)"));
}

void StoreCore::DropReserve() {
  std::lock_guard<std::mutex> lock(reserve_mu);
  std::error_code ec;
  fs::remove(reserve_path, ec);
}

void StoreCore::RestoreReserve() {
  const uint64_t reserved = options.reserved_disk_bytes;
  if (reserved == 0) return;
  std::lock_guard<std::mutex> lock(reserve_mu);
  std::error_code ec;
  if (fs::exists(reserve_path, ec) || FreeSpace() / 2 < reserved) return;
  const int fd = open(reserve_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  const bool ok = posix_fallocate(fd, 0, static_cast<off_t>(reserved)) == 0 && fsync(fd) == 0;
  close(fd);
  if (!ok) fs::remove(reserve_path, ec);
}

uint64_t StoreCore::UsageOf(absl::string_view ns) {
  std::lock_guard<std::mutex> lock(usage_mu);
  auto it = ns_bytes.find(ns);
  return it == ns_bytes.end() ? 0 : it->second;
}

void StoreCore::AddUsage(const std::string& ns, uint64_t add, uint64_t sub) {
  std::lock_guard<std::mutex> lock(usage_mu);
  uint64_t& bytes = ns_bytes[ns];
  bytes = bytes + add - std::min(sub, bytes + add);
  if (bytes == 0) ns_bytes.erase(ns);
}

StoreCore::~StoreCore() {
  if (db == nullptr) return;
  for (rocksdb::ColumnFamilyHandle* h : handles) {
    db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  }
  db->Close().PermitUncheckedError();
  delete db;
}

absl::StatusOr<uint64_t> StoreCore::AllocateBlock(uint64_t upload_id) {
  constexpr uint64_t kReserve = 1024;
  std::lock_guard<std::mutex> lock(mu);
  if (next_block >= persisted_block) {
    uint64_t reserved = next_block + kReserve;
    rocksdb::WriteOptions w;
    w.sync = true;
    CKPT_RETURN_IF_ERROR(FromRocksDb(
        PutOne(w, default_cf, kNextBlockKey, EncodeBigEndian64(reserved)), "reserving chunk ids"));
    persisted_block = reserved;
  }
  live_blocks[upload_id].push_back(next_block);
  return next_block++;
}

// ---------------------------------------------------------------------------
// Read helpers

absl::StatusOr<uint64_t> LatestVersion(StoreCore& core, const rocksdb::ReadOptions& ro,
                                       absl::string_view name) {
  std::string prefix = VersionPrefix(name);
  ScanIterator it(core.db, core.manifests_cf, ro, prefix, PrefixSuccessor(prefix));
  it->SeekToLast();
  if (!it->Valid()) {
    CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading versions"));
    return 0;
  }
  CKPT_ASSIGN_OR_RETURN(auto parsed, ParseVersionKey(View(it->key())));
  return parsed.second;
}

absl::StatusOr<std::map<uint64_t, std::vector<std::string>>> TagsByVersion(
    StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name) {
  std::map<uint64_t, std::vector<std::string>> tags;
  std::string prefix = TagPrefix(name);
  ScanIterator it(core.db, core.tags_cf, ro, prefix, PrefixSuccessor(prefix));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseTagKey(View(it->key())));
    auto version = DecodeBigEndian64(View(it->value()));
    if (!version.ok()) {
      return Annotate(version.status(),
                      absl::StrCat("tag ", Quote(key.second), " of ", Quote(name)));
    }
    tags[*version].push_back(std::move(key.second));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading tags"));
  return tags;
}

absl::Status CheckTagCount(StoreCore& core, const rocksdb::ReadOptions& ro, absl::string_view name,
                           const std::vector<std::string>& tags) {
  absl::flat_hash_set<std::string> all(tags.begin(), tags.end());
  std::string prefix = TagPrefix(name);
  ScanIterator it(core.db, core.tags_cf, ro, prefix, PrefixSuccessor(prefix));
  for (it->SeekToFirst(); it->Valid() && all.size() <= kMaxTagsPerName; it->Next()) {
    CKPT_ASSIGN_OR_RETURN(auto key, ParseTagKey(View(it->key())));
    all.insert(std::move(key.second));
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(it->status(), "reading tags"));
  if (all.size() > kMaxTagsPerName) return TooManyTags(name);
  return absl::OkStatus();
}

absl::StatusOr<bool> HasVersions(StoreCore& core, const rocksdb::ReadOptions& ro,
                                 absl::string_view name) {
  CKPT_ASSIGN_OR_RETURN(uint64_t latest, LatestVersion(core, ro, name));
  return latest != 0;
}

absl::Status VersionNotFound(StoreCore& core, const rocksdb::ReadOptions& ro,
                             absl::string_view name, uint64_t version) {
  CKPT_ASSIGN_OR_RETURN(bool any, HasVersions(core, ro, name));
  if (!any) return CheckpointNotFound(name);
  return storage::internal::VersionNotFound(name, version);
}

absl::StatusOr<VersionInfo> ReadVersionRecord(StoreCore& core, const rocksdb::ReadOptions& ro,
                                              absl::string_view name, uint64_t version) {
  std::string value;
  rocksdb::Status s = core.db->Get(ro, core.manifests_cf, VersionKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(core, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  auto info = DecodeVersionRecord(value);
  if (!info.ok()) return Annotate(info.status(), VersionContext(name, version));
  // The key is authoritative for where the record lives.
  info->name = std::string(name);
  info->version = version;
  return info;
}

absl::StatusOr<Tree> ReadTree(StoreCore& core, const rocksdb::ReadOptions& ro,
                              absl::string_view name, uint64_t version) {
  std::string value;
  rocksdb::Status s = core.db->Get(ro, core.manifests_cf, ManifestKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(core, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  auto tree = DecodeTree(value);
  if (!tree.ok()) return Annotate(tree.status(), VersionContext(name, version));
  return tree;
}

absl::Status MultiGetRefs(StoreCore& core, const rocksdb::ReadOptions& ro,
                          const std::vector<std::string>& keys,
                          std::vector<std::optional<RefValue>>* values) {
  values->assign(keys.size(), std::nullopt);
  if (keys.empty()) return absl::OkStatus();
  std::vector<rocksdb::Slice> slices(keys.begin(), keys.end());
  std::vector<rocksdb::PinnableSlice> raw(keys.size());
  std::vector<rocksdb::Status> statuses(keys.size());
  core.db->MultiGet(ro, core.refs_cf, keys.size(), slices.data(), raw.data(), statuses.data());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (statuses[i].IsNotFound()) continue;
    CKPT_RETURN_IF_ERROR(FromRocksDb(statuses[i], "reading chunk refs"));
    auto value = DecodeRefValue(View(raw[i]));
    if (!value.ok()) {
      auto key = ParseRefKey(keys[i]);
      return Annotate(value.status(), absl::StrCat("chunk ", key.ok() ? key->second.Hex() : "?"));
    }
    (*values)[i] = *value;
  }
  return absl::OkStatus();
}

absl::Status FsError(const std::error_code& ec, absl::string_view context) {
  return ErrnoStatus(ec.value(), context);
}

}  // namespace ckpt::storage::internal
