// User tags of the RocksDB store: setting and removing them ("latest" is
// derived, never stored).

#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "storage/codec.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"
#include "storage/store_core.h"

namespace ckpt::storage {

using internal::CheckTagCount;
using internal::Quote;
using internal::StoreCore;
using internal::TagNotFound;
using internal::VersionContext;
using internal::VersionNotFound;

absl::Status RocksDbStore::SetTag(absl::string_view name, absl::string_view tag, uint64_t version) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  rocksdb::ReadOptions ro;
  std::string value;
  rocksdb::Status s = core_->db->Get(ro, core_->manifests_cf, VersionKey(name, version), &value);
  if (s.IsNotFound()) return VersionNotFound(*core_, ro, name, version);
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, VersionContext(name, version)));
  CKPT_RETURN_IF_ERROR(CheckTagCount(*core_, ro, name, {std::string(tag)}));
  return FromRocksDb(core_->PutOne(core_->CommitWriteOptions(), core_->tags_cf, TagKey(name, tag),
                                   EncodeBigEndian64(version)),
                     absl::StrCat("setting tag ", Quote(tag), " of ", Quote(name)));
}

absl::Status RocksDbStore::DeleteTag(absl::string_view name, absl::string_view tag) {
  CKPT_RETURN_IF_ERROR(ValidateName(name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(tag));
  std::lock_guard<std::mutex> commit_lock(core_->commit_mu);
  std::string value;
  rocksdb::Status s =
      core_->db->Get(rocksdb::ReadOptions(), core_->tags_cf, TagKey(name, tag), &value);
  if (s.IsNotFound()) {
    return TagNotFound(name, tag);
  }
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, absl::StrCat("reading tag ", Quote(tag))));
  return FromRocksDb(core_->DeleteOne(core_->CommitWriteOptions(), core_->tags_cf,
                                      TagKey(name, tag), StoreCore::Room::kMayUseReserve),
                     absl::StrCat("deleting tag ", Quote(tag), " of ", Quote(name)));
}

}  // namespace ckpt::storage
