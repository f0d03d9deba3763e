#ifndef CKPT_STORAGE_ROCKSDB_UPLOAD_H_
#define CKPT_STORAGE_ROCKSDB_UPLOAD_H_

// Internal to the RocksDB store: its Upload, which writes an upload's new
// chunks into SST files of its own chunk-id blocks and ingests them at Seal.
// RocksDbStore::Commit reads what it wrote and looked up.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "rocksdb/slice.h"
#include "rocksdb/sst_file_writer.h"
#include "storage/codec.h"
#include "storage/store.h"
#include "storage/store_core.h"

namespace ckpt::storage::internal {

// Pins the chunks FindMissing finds, writes new chunks (ids from chunk-id
// blocks of its own) into SST files under <path>/ingest/, and at Seal
// records them as pending and ingests the files. The files are written on
// a thread of the upload's own, in the order the chunks came, so that the
// copy into the page cache (a save's largest cost) overlaps receiving and
// verifying the next chunks; at most kMaxQueuedBytes (and one chunk) wait.
// Not thread-safe (see Upload). Holds the StoreCore, so it may outlive the
// store.
class RocksDbUpload final : public Upload {
 public:
  // Where one written chunk lives.
  struct Written {
    uint64_t chunk_id;
    uint64_t length;
  };

  enum class State { kOpen, kSealed, kCommitted };

  RocksDbUpload(std::shared_ptr<StoreCore> core, std::string ns, uint64_t id)
      : core_(std::move(core)), ns_(std::move(ns)), id_(id) {}

  ~RocksDbUpload() override;

  absl::StatusOr<std::vector<bool>> FindMissing(absl::Span<const Digest> digests) override;
  absl::Status PutChunk(const Digest& digest, absl::Span<const uint8_t> data) override;
  absl::Status PutChunk(const Digest& digest, std::string&& data) override;

  bool Has(const Digest& digest) const override {
    return written_.contains(digest) || pinned_.contains(digest);
  }

  absl::Status Seal() override;

  uint64_t bytes_written() const override { return bytes_written_; }

  // For the store's Commit: the refs entries FindMissing read, if no refs
  // write has landed since (generation unchanged), else null.
  const absl::flat_hash_map<Digest, std::optional<RefValue>>* LookupsValidAt(
      uint64_t generation) const {
    return looked_up_generation_ == generation ? &looked_up_ : nullptr;
  }

  // For the store's Commit.
  const StoreCore* core() const { return core_.get(); }
  const std::string& ns() const { return ns_; }
  uint64_t id() const { return id_; }
  State state() const { return state_; }
  bool pending_written() const { return pending_written_; }
  const absl::flat_hash_map<Digest, Written>& written() const { return written_; }
  void MarkCommitted() {
    state_ = State::kCommitted;
    pending_written_ = false;
  }

 private:
  absl::Status WritePending(bool sync);

  // Checks and queues one chunk; `owned`, if not null, holds `data` and may
  // be taken.
  absl::Status Put(const Digest& digest, absl::Span<const uint8_t> data, std::string* owned);

  // The file writer thread: one queued chunk, written by AppendToFile.
  struct Append {
    bool new_block;
    uint64_t id;
    std::string bytes;
  };
  static constexpr uint64_t kMaxQueuedBytes = 16 << 20;
  // Queues `append`, waiting while kMaxQueuedBytes wait; the first write
  // error instead, once there is one.
  absl::Status Enqueue(Append append);
  // Waits until every queued chunk is written; the first write error.
  absl::Status Drain();
  // Drops what waits and ends the thread.
  void StopWriter();
  void WriterLoop();

  // kIngest: appends to the current SST file, starting a new one at a block
  // boundary (files must not span blocks, or they would overlap other
  // uploads' files) and every kMaxIngestFileBytes.
  absl::Status AppendToFile(bool new_block, uint64_t id, const rocksdb::Slice& value);
  absl::Status FinishFile();
  absl::Status SealImpl();
  void RemoveFiles();

  // Drops what an uncommitted upload holds, once the writer thread has
  // stopped (only the destructor calls it). Chunks already in the database
  // stay there until CollectGarbage finds the pending record.
  void Abandon();

  std::shared_ptr<StoreCore> core_;
  const std::string ns_;
  const uint64_t id_;
  State state_ = State::kOpen;
  absl::Status broken_;  // Sticky error of a failed write or seal.

  absl::flat_hash_map<Digest, Written> written_;
  // Digests this upload holds a pin on (found by FindMissing or written).
  absl::flat_hash_set<Digest> pinned_;
  // What FindMissing read for each digest it looked up (nullopt: absent), and
  // the refs generation before its first lookup.
  absl::flat_hash_map<Digest, std::optional<RefValue>> looked_up_;
  std::optional<uint64_t> looked_up_generation_;
  uint64_t bytes_written_ = 0;
  // Bytes written since free space was last checked.
  static constexpr uint64_t kDiskCheckBytes = 1 << 20;
  uint64_t unchecked_bytes_ = 0;

  // Chunk-id blocks taken, each recorded whole as one range.
  std::vector<ChunkIdRange> ranges_;
  uint64_t next_id_ = 0;
  uint64_t block_end_ = 0;
  bool pending_written_ = false;

  // kIngest: the file being written and those finished.
  std::unique_ptr<rocksdb::SstFileWriter> writer_;
  uint64_t writer_bytes_ = 0;
  std::string current_file_;
  std::vector<std::string> files_;

  // The writer thread's queue. writer_, writer_bytes_, current_file_ and
  // files_ belong to the thread while it runs and to the caller once
  // Drain() returned or the thread stopped.
  std::mutex queue_mu_;
  std::condition_variable queue_cv_;
  std::deque<Append> queue_;
  uint64_t queued_bytes_ = 0;
  bool appending_ = false;  // the thread is writing one it took
  bool stop_ = false;
  absl::Status write_error_;  // the first failed write
  std::thread writer_thread_;
};

}  // namespace ckpt::storage::internal

#endif  // CKPT_STORAGE_ROCKSDB_UPLOAD_H_
