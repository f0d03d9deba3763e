// The RADOS store's meeting point of multi-part saves (shared_saves.h): a
// staged save's object s.<key> and its parts' records r.<id>.<i>. Protocol:
// rados_store.h.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <optional>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/names.h"
#include "common/status_macros.h"
#include "storage/codec.h"
#include "storage/rados_internal.h"
#include "storage/shared_saves.h"
#include "storage/store_rules.h"

namespace ckpt::storage::internal {
namespace {

// Xattrs of s.<key>; kLeaseEnd says when garbage collection may remove it.
constexpr char kRound[] = "ckpt.round";
constexpr char kWorld[] = "ckpt.ws";
constexpr char kDeadline[] = "ckpt.dl";
// "o" open, "k<ms>" claimed (being committed since), "c" committed, "f"
// failed; the last two with the outcome in omap "out".
constexpr char kState[] = "ckpt.st";
constexpr char kOutcomeKey[] = "out";
// Omap: the round and outcome of the save that used this save_id before.
constexpr char kPreviousKey[] = "prev";
constexpr int kAttempts = 100;

std::string SaveOid(absl::string_view name, absl::string_view save_id) {
  return absl::StrCat("s.", Digest::Of(absl::StrCat(name, std::string(1, '\0'), save_id)).Hex());
}
std::string RecordOid(absl::string_view id, size_t part) {
  return absl::StrCat("r.", id, ".", part);
}
std::string RankKey(uint32_t rank) { return absl::StrFormat("r.%010u", rank); }

std::string NewId() {
  static std::atomic<uint64_t> counter{0};
  return Digest::Of(absl::StrCat(absl::ToUnixNanos(absl::Now()), ":", counter++, ":",
                                 std::hash<std::thread::id>()(std::this_thread::get_id()), ":",
                                 reinterpret_cast<uintptr_t>(&counter)))
      .Hex();
}

// Length-prefixed fields (8-byte big-endian lengths and numbers).
class Writer {
 public:
  void Number(uint64_t v) { out_ += EncodeBigEndian64(v); }
  void Text(absl::string_view s) {
    Number(s.size());
    out_.append(s.data(), s.size());
  }
  void Lengths(const absl::flat_hash_map<Digest, uint64_t>& lengths) {
    Number(lengths.size());
    for (const auto& [digest, length] : lengths) {
      out_.append(reinterpret_cast<const char*>(digest.bytes.data()), digest.bytes.size());
      Number(length);
    }
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool Fixed(size_t n, absl::string_view* s) {
    if (n > in_.size()) return false;
    *s = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  bool Number(uint64_t* v) {
    absl::string_view bytes;
    if (!Fixed(8, &bytes)) return false;
    *v = *DecodeBigEndian64(bytes);
    return true;
  }
  bool Text(absl::string_view* s) {
    uint64_t n = 0;
    return Number(&n) && n <= in_.size() && Fixed(static_cast<size_t>(n), s);
  }
  bool Lengths(absl::flat_hash_map<Digest, uint64_t>* lengths) {
    uint64_t n = 0;
    if (!Number(&n) || n > in_.size() / 24) return false;
    for (uint64_t i = 0; i < n; ++i) {
      absl::string_view bytes;
      uint64_t length = 0;
      if (!Fixed(16, &bytes) || !Number(&length)) return false;
      auto digest = Digest::FromBytes(bytes);
      if (!digest.ok()) return false;
      (*lengths)[*digest] = length;
    }
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

// A staged part's record: the part, and what its upload wrote and pinned.
struct PartRecord {
  StagedPart part;
  std::string upload_id;
  absl::flat_hash_map<Digest, uint64_t> written, pinned;
};

std::string EncodePartRecord(const StagedPart& part, const RadosUpload& upload) {
  VersionInfo fields;
  fields.step = part.step;
  fields.epoch = part.epoch;
  fields.metadata = part.metadata;
  fields.parent = part.parent;
  Writer w;
  w.Number(1);  // format
  w.Number(part.rank);
  w.Text(EncodeVersionRecord(fields));
  w.Number(part.tags.size());
  for (const std::string& tag : part.tags) w.Text(tag);
  w.Text(upload.id());
  w.Lengths(upload.written());
  w.Lengths(upload.pinned());
  w.Text(EncodeTree(part.tree));
  return w.Take();
}

absl::StatusOr<PartRecord> DecodePartRecord(absl::string_view bytes) {
  const auto corrupt = [](absl::string_view what) {
    return absl::DataLossError(absl::StrCat("corrupt staged part: ", what));
  };
  Reader r(bytes);
  PartRecord record;
  uint64_t format = 0, rank = 0, tags = 0;
  absl::string_view fields, text, tree;
  if (!r.Number(&format) || format != 1) return corrupt("unknown format");
  if (!r.Number(&rank) || rank > UINT32_MAX) return corrupt("bad rank");
  record.part.rank = static_cast<uint32_t>(rank);
  if (!r.Text(&fields)) return corrupt("truncated fields");
  auto info = DecodeVersionRecord(fields);
  if (!info.ok()) return info.status();
  record.part.step = info->step;
  record.part.epoch = info->epoch;
  record.part.metadata = std::move(info->metadata);
  record.part.parent = std::move(info->parent);
  if (!r.Number(&tags) || tags > bytes.size() / 8) return corrupt("bad tag count");
  for (uint64_t i = 0; i < tags; ++i) {
    if (!r.Text(&text)) return corrupt("truncated tag");
    record.part.tags.emplace_back(text);
  }
  if (!r.Text(&text)) return corrupt("truncated upload id");
  record.upload_id = std::string(text);
  if (!r.Lengths(&record.written) || !r.Lengths(&record.pinned)) return corrupt("bad chunk list");
  if (!r.Text(&tree) || !r.done()) return corrupt("truncated tree");
  CKPT_ASSIGN_OR_RETURN(record.part.tree, DecodeTree(tree));
  return record;
}

// A save's outcome: "c" + version record + tags, or "f" + code + message.
std::string EncodeOutcome(const absl::StatusOr<VersionInfo>& outcome) {
  Writer w;
  if (outcome.ok()) {
    w.Text(EncodeVersionRecord(*outcome));
    w.Number(outcome->tags.size());
    for (const std::string& tag : outcome->tags) w.Text(tag);
    return "c" + w.Take();
  }
  w.Number(static_cast<uint64_t>(outcome.status().code()));
  w.Text(outcome.status().message());
  return "f" + w.Take();
}

absl::StatusOr<VersionInfo> DecodeOutcome(absl::string_view bytes) {
  const absl::Status corrupt = absl::DataLossError("corrupt outcome of a multi-part save");
  if (bytes.empty()) return corrupt;
  Reader r(bytes.substr(1));
  if (bytes[0] == 'f') {
    uint64_t code = 0;
    absl::string_view message;
    if (!r.Number(&code) || code == 0 || code > 16 || !r.Text(&message)) return corrupt;
    return absl::Status(static_cast<absl::StatusCode>(code), message);
  }
  absl::string_view record, tag;
  uint64_t tags = 0;
  if (bytes[0] != 'c' || !r.Text(&record) || !r.Number(&tags) || tags > bytes.size()) {
    return corrupt;
  }
  CKPT_ASSIGN_OR_RETURN(VersionInfo info, DecodeVersionRecord(record));
  for (uint64_t i = 0; i < tags; ++i) {
    if (!r.Text(&tag)) return corrupt;
    info.tags.emplace_back(tag);
  }
  return info;
}

// s.<key> as read in one operation.
struct SaveObject {
  bool exists = false;
  std::string round;
  uint32_t world_size = 0;
  int64_t deadline_ms = 0;
  std::string state;
  std::optional<std::string> outcome;
  std::optional<std::string> previous;  // round \0 outcome
  bool has_rank = false;                // the rank asked about is staged
};

absl::StatusOr<SaveObject> ReadSave(librados::IoCtx& io, const std::string& oid,
                                    std::optional<uint32_t> rank) {
  librados::ObjectReadOperation op;
  std::map<std::string, librados::bufferlist> attrs, vals;
  int attrs_rc = 0, vals_rc = 0;
  op.getxattrs(&attrs, &attrs_rc);
  std::set<std::string> keys = {kOutcomeKey, kPreviousKey};
  if (rank.has_value()) keys.insert(RankKey(*rank));
  op.omap_get_vals_by_keys(keys, &vals, &vals_rc);
  librados::bufferlist unused;
  SaveObject save;
  const int rc = io.operate(oid, &op, &unused);
  if (rc == -ENOENT) return save;
  CKPT_RETURN_IF_ERROR(RadosStatus(rc, "reading a multi-part save"));
  save.exists = true;
  if (auto it = attrs.find(kRound); it != attrs.end()) save.round = it->second.to_str();
  if (auto it = attrs.find(kState); it != attrs.end()) save.state = it->second.to_str();
  save.world_size = static_cast<uint32_t>(DecimalOf(attrs, kWorld));
  save.deadline_ms = static_cast<int64_t>(DecimalOf(attrs, kDeadline));
  if (auto it = vals.find(kOutcomeKey); it != vals.end()) save.outcome = it->second.to_str();
  if (auto it = vals.find(kPreviousKey); it != vals.end()) save.previous = it->second.to_str();
  save.has_rank = rank.has_value() && vals.count(RankKey(*rank)) > 0;
  return save;
}

// The staged ranks of s.<key> (omap "r.*" -> "<record id>/<parts>").
absl::StatusOr<std::map<std::string, std::string>> StagedRanks(librados::IoCtx& io,
                                                               const std::string& oid) {
  std::map<std::string, std::string> ranks;
  std::string after;
  for (;;) {
    std::map<std::string, librados::bufferlist> vals;
    bool more = false;
    const int rc = io.omap_get_vals2(oid, after, "r.", 1000, &vals, &more);
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, "listing the parts of a multi-part save"));
    for (auto& [key, value] : vals) ranks[key] = value.to_str();
    if (!more || vals.empty()) return ranks;
    after = vals.rbegin()->first;
  }
}

bool Final(absl::string_view state) { return state == "c" || state == "f"; }

int64_t ClaimedAt(absl::string_view state) {
  int64_t ms = 0;
  if (state.empty() || state[0] != 'k' || !absl::SimpleAtoi(state.substr(1), &ms)) return -1;
  return ms;
}

class RadosSharedSaves final : public SharedSaves {
 public:
  explicit RadosSharedSaves(std::shared_ptr<RadosCore> core) : core_(std::move(core)) {}

  absl::StatusOr<SaveTicket> Stage(absl::string_view name, absl::string_view save_id,
                                   uint32_t world_size, absl::Duration timeout,
                                   const StagedPart& part, Upload& upload) override {
    auto* up = dynamic_cast<RadosUpload*>(&upload);
    if (up == nullptr || up->core() != core_.get()) {
      return absl::InvalidArgumentError("upload does not belong to this store");
    }
    CKPT_RETURN_IF_ERROR(up->Seal());
    CKPT_RETURN_IF_ERROR(up->Renew());
    SaveTicket ticket;
    ticket.name = std::string(name);
    ticket.save_id = std::string(save_id);
    librados::IoCtx io = core_->Ns(up->ns());
    const std::string oid = SaveOid(name, save_id);
    const std::string record = EncodePartRecord(part, *up);
    const size_t parts = std::max<size_t>(1, (record.size() + kTreePartBytes - 1) / kTreePartBytes);
    for (int attempt = 0;; ++attempt) {
      if (attempt == kAttempts) {
        return absl::AbortedError(absl::StrCat("staging rank ", part.rank, " of save ",
                                               Quote(save_id), " of ", Quote(name),
                                               ": too many concurrent changes; try again"));
      }
      if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(attempt));
      CKPT_ASSIGN_OR_RETURN(SaveObject save, ReadSave(io, oid, part.rank));
      const int64_t now = NowMs();
      int64_t deadline = save.deadline_ms;
      if (!save.exists || Final(save.state) || Stale(save, now)) {
        // A new save under this save_id.
        CKPT_ASSIGN_OR_RETURN(bool opened,
                              Open(io, oid, save, world_size, timeout, now, &ticket.round));
        if (!opened) continue;
        deadline = now + absl::ToInt64Milliseconds(timeout);
      } else if (ClaimedAt(save.state) >= 0) {
        return absl::AlreadyExistsError(absl::StrCat(
            "save ", Quote(save_id), " of ", Quote(name),
            " has all its parts and is being committed; a new save needs a new save_id"));
      } else {
        if (save.world_size != world_size) {
          return PartWorldSizeMismatch(name, save_id, save.world_size, part.rank, world_size);
        }
        if (save.has_rank) return PartAlreadySent(name, save_id, part.rank);
        ticket.round = save.round;
      }
      // The part's record, then its rank in the save: guarded by the round,
      // still open.
      const std::string id = NewId();
      std::vector<std::string> oids;
      std::vector<librados::ObjectWriteOperation> ops(parts);
      // Kept as long as the save's own object (its deadline was set by the
      // server that opened it).
      const librados::bufferlist expires =
          Decimal(static_cast<uint64_t>(deadline + LeaseMs(absl::ZeroDuration())));
      for (size_t p = 0; p < parts; ++p) {
        oids.push_back(RecordOid(id, p));
        ops[p].write_full(
            Bytes(absl::string_view(record).substr(p * kTreePartBytes, kTreePartBytes)));
        ops[p].setxattr(kLeaseEnd, expires);
      }
      for (int rc : OperateAll(io, oids, ops)) {
        CKPT_RETURN_IF_ERROR(RadosStatus(rc, "writing a part of a multi-part save"));
      }
      librados::ObjectWriteOperation add;
      add.cmpxattr(kRound, LIBRADOS_CMPXATTR_OP_EQ, Bytes(ticket.round));
      add.cmpxattr(kState, LIBRADOS_CMPXATTR_OP_EQ, Bytes("o"));
      add.omap_set({{RankKey(part.rank), Bytes(absl::StrCat(id, "/", parts))}});
      const int rc = io.operate(oid, &add);
      if (rc == -ECANCELED) {  // ended or replaced meanwhile: start over
        RemoveRecord(io, id, parts);
        continue;
      }
      if (rc < 0) RemoveRecord(io, id, parts);
      CKPT_RETURN_IF_ERROR(RadosStatus(rc, "staging a part of a multi-part save"));
      break;
    }
    ticket.world_size = world_size;
    // The part that completes the set claims the commit (one claim wins).
    // Failing here, after the rank is staged, ends the save for every rank
    // rather than leaving it to wait for its deadline.
    absl::Status claimed = Claim(io, oid, &ticket);
    if (!claimed.ok()) {
      Abandon(ticket, claimed).IgnoreError();
      return claimed;
    }
    return ticket;
  }

  absl::StatusOr<CollectedSave> Collect(const SaveTicket& ticket) override {
    librados::IoCtx io = core_->Ns(NamespaceOf(ticket.name));
    const std::string oid = SaveOid(ticket.name, ticket.save_id);
    CKPT_ASSIGN_OR_RETURN(SaveObject save, ReadSave(io, oid, std::nullopt));
    if (save.round != ticket.round) {
      return absl::AbortedError("the multi-part save was replaced before its commit");
    }
    CKPT_ASSIGN_OR_RETURN(auto ranks, StagedRanks(io, oid));
    CollectedSave collected;
    for (const auto& [key, value] : ranks) {
      const size_t slash = value.find('/');
      size_t parts = 0;
      if (slash == std::string::npos || !absl::SimpleAtoi(value.substr(slash + 1), &parts) ||
          parts == 0 || parts > 1024) {
        return absl::DataLossError(absl::StrCat("corrupt entry ", key, " of a multi-part save"));
      }
      std::string bytes;
      for (size_t p = 0; p < parts; ++p) {
        librados::bufferlist bl;
        const int rc = io.read(RecordOid(value.substr(0, slash), p), bl, kTreePartBytes, 0);
        CKPT_RETURN_IF_ERROR(RadosStatus(rc, "reading a part of a multi-part save"));
        bytes += bl.to_str();
      }
      CKPT_ASSIGN_OR_RETURN(PartRecord record, DecodePartRecord(bytes));
      collected.uploads.push_back(std::make_unique<RadosUpload>(
          core_, std::string(NamespaceOf(ticket.name)), record.upload_id, std::move(record.written),
          std::move(record.pinned)));
      collected.parts.push_back(std::move(record.part));
    }
    if (collected.parts.size() != save.world_size) {
      return absl::DataLossError(absl::StrCat("a multi-part save of ", save.world_size,
                                              " parts has ", collected.parts.size(), " staged"));
    }
    return collected;
  }

  absl::Status Finish(const SaveTicket& ticket,
                      const absl::StatusOr<VersionInfo>& outcome) override {
    librados::IoCtx io = core_->Ns(NamespaceOf(ticket.name));
    const std::string oid = SaveOid(ticket.name, ticket.save_id);
    auto ranks = StagedRanks(io, oid);
    librados::ObjectWriteOperation op;
    op.cmpxattr(kRound, LIBRADOS_CMPXATTR_OP_EQ, Bytes(ticket.round));
    op.setxattr(kState, Bytes(outcome.ok() ? "c" : "f"));
    op.omap_set({{kOutcomeKey, Bytes(EncodeOutcome(outcome))}});
    CKPT_RETURN_IF_ERROR(
        RadosStatus(io.operate(oid, &op), "recording the outcome of a multi-part save"));
    // The parts' records are not needed any more (collections would remove
    // them later anyway).
    if (ranks.ok()) {
      for (const auto& [key, value] : *ranks) {
        const size_t slash = value.find('/');
        size_t parts = 0;
        if (slash != std::string::npos && absl::SimpleAtoi(value.substr(slash + 1), &parts)) {
          RemoveRecord(io, value.substr(0, slash), std::min<size_t>(parts, 1024));
        }
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<SaveState> Poll(const SaveTicket& ticket) override {
    librados::IoCtx io = core_->Ns(NamespaceOf(ticket.name));
    const std::string oid = SaveOid(ticket.name, ticket.save_id);
    CKPT_ASSIGN_OR_RETURN(SaveObject save, ReadSave(io, oid, std::nullopt));
    SaveState state;
    state.world_size = save.world_size;
    if (save.exists && save.round != ticket.round && save.previous.has_value() &&
        absl::StartsWith(*save.previous, ticket.round + std::string(1, '\0'))) {
      state.outcome =
          DecodeOutcome(absl::string_view(*save.previous).substr(ticket.round.size() + 1));
      return state;
    }
    if (!save.exists || save.round != ticket.round) {
      state.outcome = absl::UnavailableError(absl::StrCat(
          "the record of this multi-part save of ", Quote(ticket.name),
          " is gone (replaced by a new save with the same save_id, or removed); whether it "
          "was committed is unknown: list the versions"));
      return state;
    }
    if (Final(save.state)) {
      state.outcome = save.outcome.has_value()
                          ? DecodeOutcome(*save.outcome)
                          : absl::DataLossError("a multi-part save ended without an outcome");
      return state;
    }
    const int64_t now = NowMs();
    if (const int64_t claimed = ClaimedAt(save.state); claimed >= 0) {
      if (now - claimed > LeaseMs(absl::ZeroDuration())) {
        state.outcome = absl::UnavailableError(absl::StrCat(
            "the server committing this multi-part save of ", Quote(ticket.name),
            " stopped answering; whether it was committed is unknown: list the versions"));
      }
      state.staged = save.world_size;
      return state;
    }
    state.expired = now > save.deadline_ms;
    if (state.expired) {
      CKPT_ASSIGN_OR_RETURN(auto ranks, StagedRanks(io, oid));
      state.staged = static_cast<uint32_t>(ranks.size());
    }
    return state;
  }

  absl::StatusOr<bool> Abandon(const SaveTicket& ticket, const absl::Status& why) override {
    librados::IoCtx io = core_->Ns(NamespaceOf(ticket.name));
    librados::ObjectWriteOperation op;
    op.cmpxattr(kRound, LIBRADOS_CMPXATTR_OP_EQ, Bytes(ticket.round));
    op.cmpxattr(kState, LIBRADOS_CMPXATTR_OP_EQ, Bytes("o"));
    op.setxattr(kState, Bytes("f"));
    op.omap_set({{kOutcomeKey, Bytes(EncodeOutcome(why))}});
    const int rc = io.operate(SaveOid(ticket.name, ticket.save_id), &op);
    if (rc == -ECANCELED || rc == -ENOENT) return false;
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, "abandoning a multi-part save"));
    return true;
  }

  absl::Status KeepAlive(Upload& upload) override {
    auto* up = dynamic_cast<RadosUpload*>(&upload);
    return up == nullptr ? absl::OkStatus() : up->Renew();
  }

  void Committed(Upload& upload) override {
    if (auto* up = dynamic_cast<RadosUpload*>(&upload)) up->MarkCommitted();
  }

 private:
  // Milliseconds an upload lease (plus `extra`) lasts: how long a staged
  // save's objects are kept past its deadline, and how long a claim may go
  // unanswered.
  int64_t LeaseMs(absl::Duration extra) const {
    return absl::ToInt64Milliseconds(core_->options.rados.upload_lease +
                                     core_->options.rados.op_timeout + extra);
  }

  // Open past its deadline, or claimed by a server that stopped answering.
  bool Stale(const SaveObject& save, int64_t now) const {
    const int64_t claimed = ClaimedAt(save.state);
    if (claimed >= 0) return now - claimed > LeaseMs(absl::ZeroDuration());
    return save.state == "o" && now > save.deadline_ms;
  }

  // Claims the commit of `ticket`'s save if every rank is staged.
  absl::Status Claim(librados::IoCtx& io, const std::string& oid, SaveTicket* ticket) {
    CKPT_ASSIGN_OR_RETURN(auto ranks, StagedRanks(io, oid));
    if (ranks.size() < ticket->world_size) return absl::OkStatus();
    librados::ObjectWriteOperation claim;
    claim.cmpxattr(kRound, LIBRADOS_CMPXATTR_OP_EQ, Bytes(ticket->round));
    claim.cmpxattr(kState, LIBRADOS_CMPXATTR_OP_EQ, Bytes("o"));
    claim.setxattr(kState, Bytes(absl::StrCat("k", NowMs())));
    const int rc = io.operate(oid, &claim);
    if (rc != -ECANCELED) CKPT_RETURN_IF_ERROR(RadosStatus(rc, "claiming a multi-part save"));
    ticket->commit = rc >= 0;
    return absl::OkStatus();
  }

  // Starts a new save under s.<key>, the earlier one's outcome kept as
  // "prev". False if another server changed the object meanwhile.
  absl::StatusOr<bool> Open(librados::IoCtx& io, const std::string& oid, const SaveObject& old,
                            uint32_t world_size, absl::Duration timeout, int64_t now,
                            std::string* round) {
    *round = NewId();
    librados::ObjectWriteOperation op;
    if (old.exists) {
      op.cmpxattr(kRound, LIBRADOS_CMPXATTR_OP_EQ, Bytes(old.round));
      op.cmpxattr(kState, LIBRADOS_CMPXATTR_OP_EQ, Bytes(old.state));
      std::string outcome;
      if (Final(old.state) && old.outcome.has_value()) {
        outcome = *old.outcome;
      } else if (ClaimedAt(old.state) >= 0) {
        outcome = EncodeOutcome(absl::UnavailableError(
            "the server committing this multi-part save stopped answering; whether it was "
            "committed is unknown: list the versions"));
      } else {
        outcome = EncodeOutcome(absl::DeadlineExceededError(
            "the multi-part save ended without all its parts (its deadline passed, or the "
            "server committing it stopped answering); nothing was saved"));
      }
      op.omap_clear();
      op.omap_set({{kPreviousKey, Bytes(absl::StrCat(old.round, std::string(1, '\0'), outcome))}});
    } else {
      op.create(true);
    }
    const int64_t deadline = now + absl::ToInt64Milliseconds(timeout);
    op.setxattr(kRound, Bytes(*round));
    op.setxattr(kWorld, Decimal(world_size));
    op.setxattr(kDeadline, Decimal(static_cast<uint64_t>(deadline)));
    op.setxattr(kLeaseEnd,
                Decimal(static_cast<uint64_t>(deadline + LeaseMs(absl::ZeroDuration()))));
    op.setxattr(kState, Bytes("o"));
    const int rc = io.operate(oid, &op);
    if (rc == -ECANCELED || rc == -EEXIST) return false;
    CKPT_RETURN_IF_ERROR(RadosStatus(rc, "starting a multi-part save"));
    return true;
  }

  static void RemoveRecord(librados::IoCtx& io, const std::string& id, size_t parts) {
    for (size_t p = 0; p < parts; ++p) io.remove(RecordOid(id, p));
  }

  std::shared_ptr<RadosCore> core_;
};

}  // namespace

std::unique_ptr<SharedSaves> MakeSharedSaves(std::shared_ptr<RadosCore> core) {
  return std::make_unique<RadosSharedSaves>(std::move(core));
}

}  // namespace ckpt::storage::internal
