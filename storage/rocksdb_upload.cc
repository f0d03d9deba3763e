#include "storage/rocksdb_upload.h"

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/crash_point.h"
#include "common/status_macros.h"
#include "rocksdb/options.h"
#include "storage/rocksdb_status.h"
#include "storage/rocksdb_store.h"

namespace ckpt::storage::internal {

namespace fs = std::filesystem;

RocksDbUpload::~RocksDbUpload() {
  StopWriter();
  if (state_ != State::kCommitted) Abandon();
  for (const Digest& d : pinned_) core_->Unpin(RefKey(ns_, d));
  std::lock_guard<std::mutex> lock(core_->mu);
  core_->live_uploads.erase(id_);
  core_->live_blocks.erase(id_);
}

absl::StatusOr<std::vector<bool>> RocksDbUpload::FindMissing(absl::Span<const Digest> digests) {
  std::vector<bool> missing(digests.size(), false);
  std::vector<size_t> asked;
  std::vector<std::string> keys;
  for (size_t i = 0; i < digests.size(); ++i) {
    if (Has(digests[i])) continue;
    asked.push_back(i);
    keys.push_back(RefKey(ns_, digests[i]));
  }
  // Pin before looking: a GC that has not yet checked the pins will skip
  // these; one that already did has written its batch, and the lookup
  // below sees the entry gone.
  for (const std::string& key : keys) core_->Pin(key);
  // Read before the lookups (see StoreCore::refs_generation).
  const uint64_t generation = core_->refs_generation.load(std::memory_order_acquire);
  if (!looked_up_generation_.has_value()) looked_up_generation_ = generation;
  std::vector<std::optional<RefValue>> values;
  absl::Status s = MultiGetRefs(*core_, rocksdb::ReadOptions(), keys, &values);
  if (s.ok()) {
    for (size_t j = 0; j < asked.size(); ++j) looked_up_[digests[asked[j]]] = values[j];
  }
  for (size_t j = 0; j < asked.size(); ++j) {
    const Digest& d = digests[asked[j]];
    if (s.ok() && values[j].has_value() && pinned_.insert(d).second) continue;
    // Missing, a repeat within this call, or an error: drop the pin.
    core_->Unpin(keys[j]);
    if (s.ok() && !values[j].has_value()) missing[asked[j]] = true;
  }
  if (!s.ok()) return s;
  return missing;
}

absl::Status RocksDbUpload::PutChunk(const Digest& digest, absl::Span<const uint8_t> data) {
  return Put(digest, data, nullptr);
}

absl::Status RocksDbUpload::PutChunk(const Digest& digest, std::string&& data) {
  return Put(digest,
             absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
             &data);
}

absl::Status RocksDbUpload::Put(const Digest& digest, absl::Span<const uint8_t> data,
                                std::string* owned) {
  if (state_ != State::kOpen) {
    return absl::FailedPreconditionError("upload is sealed; no more chunks accepted");
  }
  CKPT_RETURN_IF_ERROR(broken_);
  CKPT_RETURN_IF_ERROR(CheckChunk(digest, data, core_->options.max_chunk_bytes));
  if (written_.contains(digest)) return absl::OkStatus();

  bool new_block = next_id_ == block_end_;
  if (new_block) {
    CKPT_ASSIGN_OR_RETURN(uint64_t block, core_->AllocateBlock(id_));
    next_id_ = block << kChunkIdBlockBits;
    block_end_ = next_id_ + kChunkIdBlockSize;
    ranges_.push_back({next_id_, block_end_ - 1});
  }
  const uint64_t id = next_id_;
  // Free space is looked at every MiB or so (statvfs per small chunk
  // would cost more than the chunk), counting what still waits to be
  // written.
  absl::Status s;
  unchecked_bytes_ += data.size();
  if (unchecked_bytes_ >= kDiskCheckBytes || written_.empty()) {
    uint64_t queued;
    {
      std::lock_guard<std::mutex> lock(queue_mu_);
      queued = queued_bytes_;
    }
    s = core_->CheckDiskSpace(std::max<uint64_t>(unchecked_bytes_, kDiskCheckBytes) + queued);
    unchecked_bytes_ = 0;
  }
  if (s.ok()) {
    std::string bytes = owned != nullptr
                            ? std::move(*owned)
                            : std::string(reinterpret_cast<const char*>(data.data()), data.size());
    s = Enqueue(Append{new_block, id, std::move(bytes)});
  }
  if (!s.ok()) {
    broken_ = s;  // The file or range is in an unknown state now.
    return s;
  }
  ++next_id_;
  written_.emplace(digest, Written{id, data.size()});
  bytes_written_ += data.size();
  if (pinned_.insert(digest).second) core_->Pin(RefKey(ns_, digest));
  return absl::OkStatus();
}

absl::Status RocksDbUpload::Enqueue(Append append) {
  std::unique_lock<std::mutex> lock(queue_mu_);
  if (!writer_thread_.joinable()) writer_thread_ = std::thread([this] { WriterLoop(); });
  queue_cv_.wait(lock, [&] { return queued_bytes_ < kMaxQueuedBytes || !write_error_.ok(); });
  CKPT_RETURN_IF_ERROR(write_error_);
  queued_bytes_ += append.bytes.size();
  queue_.push_back(std::move(append));
  queue_cv_.notify_all();
  return absl::OkStatus();
}

void RocksDbUpload::WriterLoop() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  for (;;) {
    queue_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (stop_) return;
    Append append = std::move(queue_.front());
    queue_.pop_front();
    appending_ = true;
    const bool failed = !write_error_.ok();
    lock.unlock();
    // After a failure the rest is only dropped: the upload is broken.
    absl::Status s = failed
                         ? absl::OkStatus()
                         : AppendToFile(append.new_block, append.id,
                                        rocksdb::Slice(append.bytes.data(), append.bytes.size()));
    const size_t n = append.bytes.size();
    append.bytes = std::string();  // freed outside the lock
    lock.lock();
    appending_ = false;
    queued_bytes_ -= n;
    if (!s.ok() && write_error_.ok()) write_error_ = s;
    queue_cv_.notify_all();
  }
}

absl::Status RocksDbUpload::Drain() {
  std::unique_lock<std::mutex> lock(queue_mu_);
  queue_cv_.wait(lock, [&] { return queue_.empty() && !appending_; });
  return write_error_;
}

void RocksDbUpload::StopWriter() {
  {
    std::lock_guard<std::mutex> lock(queue_mu_);
    stop_ = true;
    for (const Append& a : queue_) queued_bytes_ -= a.bytes.size();
    queue_.clear();
    queue_cv_.notify_all();
  }
  if (writer_thread_.joinable()) writer_thread_.join();
}

absl::Status RocksDbUpload::Seal() {
  if (state_ != State::kOpen) return absl::OkStatus();
  CKPT_RETURN_IF_ERROR(broken_);
  absl::Status s = SealImpl();
  if (!s.ok()) {
    broken_ = s;
    return s;
  }
  state_ = State::kSealed;
  return absl::OkStatus();
}

absl::Status RocksDbUpload::WritePending(bool sync) {
  PendingRecord record{ranges_, written_.size(), bytes_written_};
  rocksdb::WriteOptions w;
  w.sync = sync;
  CKPT_RETURN_IF_ERROR(
      FromRocksDb(core_->PutOne(w, core_->default_cf, PendingKey(id_), EncodePendingRecord(record)),
                  "recording pending upload"));
  pending_written_ = true;
  return absl::OkStatus();
}

absl::Status RocksDbUpload::AppendToFile(bool new_block, uint64_t id, const rocksdb::Slice& value) {
  if (writer_ != nullptr && (new_block || writer_bytes_ >= kMaxIngestFileBytes)) {
    CKPT_RETURN_IF_ERROR(FinishFile());
  }
  if (writer_ == nullptr) {
    current_file_ =
        (fs::path(core_->ingest_dir) / absl::StrCat(id_, "-", files_.size(), ".sst")).string();
    // invalidate_page_cache=false: a restore right after a save then reads
    // from the page cache.
    writer_ = std::make_unique<rocksdb::SstFileWriter>(core_->chunk_env_options,
                                                       core_->chunk_file_options, core_->chunks_cf,
                                                       /*invalidate_page_cache=*/false);
    writer_bytes_ = 0;
    CKPT_RETURN_IF_ERROR(
        FromRocksDb(writer_->Open(current_file_), absl::StrCat("creating ", current_file_)));
  }
  CKPT_RETURN_IF_ERROR(
      FromRocksDb(writer_->Put(ChunkKey(id), value), absl::StrCat("writing ", current_file_)));
  writer_bytes_ += value.size();
  return absl::OkStatus();
}

absl::Status RocksDbUpload::FinishFile() {
  rocksdb::Status s = writer_->Finish();  // Fsyncs the file.
  writer_.reset();
  files_.push_back(std::move(current_file_));
  current_file_.clear();
  return FromRocksDb(s, absl::StrCat("finishing ", files_.back()));
}

absl::Status RocksDbUpload::SealImpl() {
  if (written_.empty()) return absl::OkStatus();
  CKPT_RETURN_IF_ERROR(Drain());
  StopWriter();  // idle now; a part may wait long for its save to resolve
  // Recorded before the chunks enter the database: after a crash in
  // between, GC finds and removes them.
  CKPT_RETURN_IF_ERROR(WritePending(/*sync=*/true));
  if (writer_ != nullptr) CKPT_RETURN_IF_ERROR(FinishFile());
  rocksdb::IngestExternalFileOptions ingest;
  ingest.move_files = true;
  ingest.write_global_seqno = false;  // Keep files immutable (new DBs only).
  CKPT_CRASH_POINT("upload.before_ingest");
  rocksdb::Status s = core_->db->IngestExternalFile(core_->chunks_cf, files_, ingest);
  RemoveFiles();  // Moved on success; leftovers on failure.
  CKPT_RETURN_IF_ERROR(FromRocksDb(s, "ingesting chunk files"));
  CKPT_CRASH_POINT("upload.after_ingest");
  return absl::OkStatus();
}

void RocksDbUpload::RemoveFiles() {
  std::error_code ec;
  for (const std::string& f : files_) fs::remove(f, ec);
  files_.clear();
  if (!current_file_.empty()) fs::remove(current_file_, ec);
  current_file_.clear();
}

void RocksDbUpload::Abandon() {
  writer_.reset();  // Abandons an unfinished file.
  RemoveFiles();
}

}  // namespace ckpt::storage::internal
