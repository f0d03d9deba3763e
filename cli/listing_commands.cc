// ls, versions and show: what the server holds, read only.

#include <CLI/CLI.hpp>
#include <algorithm>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "common/retention.h"
#include "common/status_macros.h"

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

}  // namespace

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
