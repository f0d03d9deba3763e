// ls, versions and show: what the server holds, read only.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "common/retention.h"
#include "common/status_macros.h"
#include "common/tensor_diff.h"

namespace ckpt::cli {
namespace {

using client::RawClient;

// ------------------------------------------------------------------ ls

struct LsArgs {
  std::string prefix;
  bool json = false;
};

absl::Status RunLs(Context& ctx, const LsArgs& args) {
  if (!args.prefix.empty()) CKPT_RETURN_IF_ERROR(ValidatePrefix(args.prefix));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto list, client->ListCheckpoints(args.prefix));
  if (args.json) {
    Json out = Json::array();
    for (const auto& s : list) out.push_back(SummaryToJson(s));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  if (list.empty()) {
    // stdout stays empty for scripts; a person sees why.
    ctx.err() << (args.prefix.empty() ? std::string("no checkpoints on this server")
                                      : absl::StrCat("no checkpoints under '", args.prefix, "'"))
              << "\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : list) {
    rows.push_back({s.name, absl::StrCat(s.latest_version), absl::StrCat(s.num_versions),
                    FormatTime(s.latest_create_time_ms)});
  }
  PrintTable(ctx.out(), {"NAME", "LATEST", "VERSIONS", "UPDATED"}, rows);
  return absl::OkStatus();
}

// ------------------------------------------------------------ versions

struct VersionsArgs {
  std::string name;
  bool json = false;
};

absl::Status RunVersions(Context& ctx, const VersionsArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto versions, client->ListVersions(args.name));
  if (args.json) {
    Json out = Json::array();
    for (const auto& v : versions) out.push_back(VersionToJson(v));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& v : versions) {
    rows.push_back({absl::StrCat(v.version), FormatTime(v.create_time_ms), absl::StrCat(v.step),
                    absl::StrCat(v.epoch), absl::StrCat(v.num_tensors), HumanBytes(v.data_bytes),
                    HumanBytes(v.new_bytes), v.tags.empty() ? "-" : absl::StrJoin(v.tags, ",")});
  }
  PrintTable(ctx.out(), {"VERSION", "CREATED", "STEP", "EPOCH", "TENSORS", "SIZE", "NEW", "TAGS"},
             rows);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- show

struct ShowArgs {
  std::string ref;
  bool json = false;
  bool stats = false;
};

absl::Status RunShow(Context& ctx, const ShowArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto manifest, client->GetManifest(ref.name, ref.version, ref.tag));
  if (args.json) {
    Json out = VersionToJson(manifest.version);
    CKPT_ASSIGN_OR_RETURN(out["tree"], TreeToJson(manifest.tree));
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  PrintVersionHeader(ctx.out(), manifest.version);
  ctx.out() << '\n';
  if (args.stats) {
    PrintStatsTable(ctx.out(), manifest.tree);
  } else {
    PrintTree(ctx.out(), manifest.tree);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- diff

struct DiffArgs {
  std::string a;
  std::string b;
  bool json = false;
  uint32_t max = 0;
};

std::string DTypeShape(DType dtype, const std::vector<int64_t>& shape) {
  return absl::StrCat(DTypeName(dtype), ShapeText(shape));
}

absl::Status RunDiff(Context& ctx, const DiffArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef a, ParseVersionRef(args.a));
  // B may be "@VERSION" or "@TAG": the same name as A.
  CKPT_ASSIGN_OR_RETURN(
      VersionRef b,
      ParseVersionRef(absl::StartsWith(args.b, "@") ? absl::StrCat(a.name, args.b) : args.b));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(VersionDiff diff,
                        client->Diff(a.name, a.version, a.tag, b.name, b.version, b.tag, args.max));
  if (args.json) {
    Json out = Json::object();
    out["a"] = VersionToJson(diff.a);
    out["b"] = VersionToJson(diff.b);
    out["identical"] = diff.identical;
    out["changed"] = diff.changed;
    out["meta_changed"] = diff.meta_changed;
    out["only_in_a"] = diff.only_in_a;
    out["only_in_b"] = diff.only_in_b;
    out["truncated"] = diff.truncated;
    out["bytes_compared"] = diff.bytes_compared;
    Json tensors = Json::array();
    for (const TensorDiff& t : diff.tensors) {
      Json j = Json::object();
      j["key"] = t.key;
      j["change"] = TensorChangeName(t.change);
      if (t.change != TensorChange::kOnlyInB) {
        j["dtype_a"] = std::string(DTypeName(t.dtype_a));
        j["shape_a"] = t.shape_a;
      }
      if (t.change != TensorChange::kOnlyInA) {
        j["dtype_b"] = std::string(DTypeName(t.dtype_b));
        j["shape_b"] = t.shape_b;
      }
      if (t.change == TensorChange::kChanged) {
        j["rel_l2"] = FloatToJson(t.rel_l2);
        j["max_abs_diff"] = FloatToJson(t.max_abs_diff);
        j["nonfinite_pairs"] = t.nonfinite_pairs;
      }
      tensors.push_back(std::move(j));
    }
    out["tensors"] = std::move(tensors);
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  ctx.out() << "a: " << diff.a.name << "@" << diff.a.version << " (step " << diff.a.step << ", "
            << FormatTime(diff.a.create_time_ms) << ")\n"
            << "b: " << diff.b.name << "@" << diff.b.version << " (step " << diff.b.step << ", "
            << FormatTime(diff.b.create_time_ms) << ")\n"
            << diff.identical << " identical, " << diff.changed << " changed, " << diff.meta_changed
            << " dtype/shape changed, " << diff.only_in_a << " only in a, " << diff.only_in_b
            << " only in b (" << HumanBytes(diff.bytes_compared) << " compared)\n";
  std::vector<std::vector<std::string>> rows;
  for (const TensorDiff& t : diff.tensors) {
    std::vector<std::string> row = {Printable(t.key), TensorChangeName(t.change), "", "", ""};
    switch (t.change) {
      case TensorChange::kChanged:
        row[2] = absl::StrFormat("%.6g", t.rel_l2);
        row[3] = absl::StrFormat("%.6g", t.max_abs_diff);
        row[4] = DTypeShape(t.dtype_a, t.shape_a);
        if (t.nonfinite_pairs > 0) absl::StrAppend(&row[4], "  ", t.nonfinite_pairs, " non-finite");
        break;
      case TensorChange::kMetaChanged:
        row[4] = absl::StrCat(DTypeShape(t.dtype_a, t.shape_a), " -> ",
                              DTypeShape(t.dtype_b, t.shape_b));
        break;
      case TensorChange::kOnlyInA:
        row[4] = DTypeShape(t.dtype_a, t.shape_a);
        break;
      case TensorChange::kOnlyInB:
        row[4] = DTypeShape(t.dtype_b, t.shape_b);
        break;
    }
    rows.push_back(std::move(row));
  }
  if (!rows.empty()) ctx.out() << '\n';
  PrintTable(ctx.out(), {"KEY", "CHANGE", "REL_L2", "MAX_ABS_DIFF", "DTYPE/SHAPE"}, rows);
  if (diff.truncated > 0) ctx.out() << "... and " << diff.truncated << " more (--max)\n";
  return absl::OkStatus();
}

// ---------------------------------------------------------------- log

struct LogArgs {
  std::string ref;
  bool json = false;
};

constexpr int kMaxLineage = 1000;

absl::Status RunLog(Context& ctx, const LogArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(uint64_t version, ResolveVersion(*client, ref));
  std::map<std::string, std::vector<VersionInfo>> listed;  // versions by name, fetched once
  std::set<std::string> seen;
  Json chain = Json::array();
  std::string name = ref.name;
  std::string missing;  // "NAME@V" of a parent that is gone
  for (int hop = 0; hop < kMaxLineage; ++hop) {
    const std::string at = absl::StrCat(name, "@", version);
    if (!seen.insert(at).second) break;  // a cycle (parents set by hand)
    auto it = listed.find(name);
    if (it == listed.end()) {
      absl::StatusOr<std::vector<VersionInfo>> versions = client->ListVersions(name);
      if (!versions.ok() && versions.status().code() != absl::StatusCode::kNotFound) {
        return versions.status();
      }
      it = listed.emplace(name, versions.ok() ? *std::move(versions) : std::vector<VersionInfo>{})
               .first;
    }
    const VersionInfo* info = nullptr;
    for (const VersionInfo& v : it->second) {
      if (v.version == version) info = &v;
    }
    if (info == nullptr) {
      if (hop == 0) return absl::NotFoundError(absl::StrCat("version ", at, " not found"));
      missing = at;
      break;
    }
    if (args.json) {
      chain.push_back(VersionToJson(*info));
    } else {
      ctx.out() << info->name << "@" << info->version << "  step " << info->step << "  "
                << FormatTime(info->create_time_ms) << "  " << HumanBytes(info->data_bytes)
                << (info->tags.empty() ? "" : "  tags: ") << absl::StrJoin(info->tags, ",") << "\n";
    }
    if (info->parent.empty()) break;
    auto parent = ParseVersionRef(info->parent);
    if (!parent.ok()) break;
    name = parent->name;
    version = parent->version;
  }
  if (args.json) {
    Json out = Json::object();
    out["chain"] = std::move(chain);
    if (!missing.empty()) out["missing_parent"] = missing;
    PrintJson(ctx.out(), out);
  } else if (!missing.empty()) {
    ctx.out() << missing << "  (deleted)\n";
  }
  return absl::OkStatus();
}

}  // namespace

void AddLogCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<LogArgs>();
  CLI::App* sub = app.add_subcommand(
      "log",
      "Print a version's lineage: it, the version it was trained from (its parent), that "
      "one's parent, ... across names, newest first");
  sub->add_option("REF", args->ref, "NAME, NAME@VERSION or NAME@TAG (default: latest)")->required();
  sub->add_flag("--json", args->json, "Print {\"chain\": [versions...], \"missing_parent\"}");
  table.Add(sub, [args](Context& ctx) { return RunLog(ctx, *args); });
}

void AddDiffCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<DiffArgs>();
  CLI::App* sub = app.add_subcommand(
      "diff",
      "Compare two versions' tensors: keys only in one, dtype/shape changes, and for changed "
      "tensors the relative L2 change ||b-a||/||a|| and the largest absolute difference "
      "(computed by the server; identical tensors are found by digest, without reading them)");
  sub->add_option("A", args->a, "NAME, NAME@VERSION or NAME@TAG (the reference)")->required();
  sub->add_option("B", args->b, "NAME, NAME@VERSION or NAME@TAG, or @VERSION / @TAG of A's name")
      ->required();
  sub->add_flag("--json", args->json, "Print a JSON object");
  sub->add_option("--max", args->max, "most tensors listed (default 1000, at most 10000)");
  table.Add(sub, [args](Context& ctx) { return RunDiff(ctx, *args); });
}

void AddLsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<LsArgs>();
  CLI::App* sub = app.add_subcommand(
      "ls", "List checkpoints: name, latest version, number of versions, time of the latest");
  sub->add_option("prefix", args->prefix, "Only names starting with PREFIX (e.g. team/)");
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunLs(ctx, *args); });
}

void AddVersionsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<VersionsArgs>();
  CLI::App* sub = app.add_subcommand("versions", "List the versions of a checkpoint, oldest first");
  sub->add_option("name", args->name, "Checkpoint name")->required();
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunVersions(ctx, *args); });
}

void AddShowCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<ShowArgs>();
  CLI::App* sub = app.add_subcommand(
      "show", "Show a version's record and value tree (keys, dtypes, shapes, scalars)");
  sub->add_option("ref", args->ref, "NAME, NAME@VERSION or NAME@TAG (default: latest)")->required();
  sub->add_flag("--json", args->json,
                "Print a JSON object with the tree nested under \"tree\" (tensors with \"stats\")");
  sub->add_flag("--stats", args->stats,
                "Print each tensor's statistics (min, max, mean, std, L2, NaN/Inf counts) "
                "instead of the tree; NON-FINITE marks tensors with NaN or infinities");
  table.Add(sub, [args](Context& ctx) { return RunShow(ctx, *args); });
}

}  // namespace ckpt::cli
