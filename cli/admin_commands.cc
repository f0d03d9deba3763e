// gc, backup, usage, health and stats: the server and its store as a whole.

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

// ------------------------------------------------------------------ gc

struct JsonArgs {
  bool json = false;
};

absl::Status RunGc(Context& ctx, const JsonArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(GcResult gc, client->GarbageCollect());
  if (args.json) {
    PrintJson(ctx.out(), GcResultToJson(gc));
    return absl::OkStatus();
  }
  PrintFields(ctx.out(), {
                             {"chunks removed", absl::StrCat(gc.chunks_removed)},
                             {"bytes removed", HumanAndExactBytes(gc.bytes_removed)},
                             {"orphan uploads removed", absl::StrCat(gc.orphan_uploads_removed)},
                         });
  return absl::OkStatus();
}

// ---------------------------------------------------------------- backup

struct BackupArgs {
  std::string name;
  bool json = false;
};

absl::Status RunBackup(Context& ctx, const BackupArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(BackupInfo backup, client->Backup(args.name));
  if (args.json) {
    PrintJson(ctx.out(), BackupInfoToJson(backup));
    return absl::OkStatus();
  }
  PrintFields(ctx.out(), {
                             {"backup", backup.name},
                             {"path (on the server)", backup.path},
                             {"versions", absl::StrCat(backup.versions)},
                             {"files", absl::StrCat(backup.files)},
                             {"bytes", HumanAndExactBytes(backup.bytes)},
                         });
  return absl::OkStatus();
}

// --------------------------------------------------------------- usage

struct UsageArgs {
  std::string prefix;
  bool json = false;
};

std::string Percent(uint64_t used, uint64_t quota) {
  return quota == 0 ? "-" : absl::StrFormat("%.1f%%", 100.0 * used / quota);
}

absl::Status RunUsage(Context& ctx, const UsageArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  std::vector<std::string> namespaces;
  if (!args.prefix.empty()) {
    const std::string ns = args.prefix.substr(0, args.prefix.find('/'));
    CKPT_RETURN_IF_ERROR(ValidateName(ns));
    namespaces.push_back(ns);
  } else {
    // Every namespace this token can list.
    CKPT_ASSIGN_OR_RETURN(auto list, client->ListCheckpoints(""));
    for (const auto& s : list) {
      const std::string ns(NamespaceOf(s.name));
      if (namespaces.empty() || namespaces.back() != ns) namespaces.push_back(ns);
    }
    std::sort(namespaces.begin(), namespaces.end());
    namespaces.erase(std::unique(namespaces.begin(), namespaces.end()), namespaces.end());
  }
  std::vector<client::NamespaceUsage> usages;
  for (const std::string& ns : namespaces) {
    CKPT_ASSIGN_OR_RETURN(client::NamespaceUsage usage, client->GetUsage(ns));
    usages.push_back(usage);
  }
  if (args.json) {
    Json out = Json::array();
    for (const auto& u : usages) {
      out.push_back(
          {{"namespace", u.ns}, {"used_bytes", u.used_bytes}, {"quota_bytes", u.quota_bytes}});
    }
    PrintJson(ctx.out(), out);
    return absl::OkStatus();
  }
  if (usages.empty()) {
    ctx.err() << "no checkpoints on this server\n";
    return absl::OkStatus();
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& u : usages) {
    rows.push_back({u.ns, HumanBytes(u.used_bytes),
                    u.quota_bytes == 0 ? "none" : HumanBytes(u.quota_bytes),
                    Percent(u.used_bytes, u.quota_bytes)});
  }
  PrintTable(ctx.out(), {"NAMESPACE", "USED", "QUOTA", "USE%"}, rows);
  return absl::OkStatus();
}

// -------------------------------------------------------------- health

absl::Status RunHealth(Context& ctx) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_RETURN_IF_ERROR(client->Health());
  ctx.out() << "SERVING\n";
  return absl::OkStatus();
}

// --------------------------------------------------------------- stats

absl::Status RunStats(Context& ctx, const JsonArgs& args) {
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(client::ServerInfo info, client->GetServerInfo());
  if (args.json) {
    PrintJson(ctx.out(), ServerInfoToJson(info));
    return absl::OkStatus();
  }
  const StoreStats& s = info.stats;
  PrintFields(ctx.out(), {
                             {"server version", info.server_version},
                             {"chunk size", HumanAndExactBytes(info.chunk_size)},
                             {"checkpoints", absl::StrCat(s.checkpoints)},
                             {"versions", absl::StrCat(s.versions)},
                             {"chunks", absl::StrCat(s.chunks)},
                             {"stored bytes", HumanAndExactBytes(s.stored_bytes)},
                             {"logical bytes", HumanAndExactBytes(s.logical_bytes)},
                             {"dedup ratio", absl::StrFormat("%.2f", info.dedup_ratio)},
                             {"disk bytes", HumanAndExactBytes(s.disk_bytes)},
                             {"active uploads", absl::StrCat(s.active_uploads)},
                             {"garbage bytes", HumanAndExactBytes(s.garbage_bytes)},
                         });
  return absl::OkStatus();
}

}  // namespace

void AddGcCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<JsonArgs>();
  CLI::App* sub =
      app.add_subcommand("gc", "Remove chunks no version references and leftovers of dead uploads");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunGc(ctx, *args); });
}

void AddBackupCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<BackupArgs>();
  CLI::App* sub = app.add_subcommand(
      "backup",
      "Have the server write a consistent copy of its whole store into its --backup-dir while "
      "it serves (admin right on \"*\")");
  sub->add_option("name", args->name,
                  "Directory name of the backup in the server's --backup-dir (default: "
                  "ckpt-backup-<UTC time>)");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunBackup(ctx, *args); });
}

void AddUsageCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<UsageArgs>();
  CLI::App* sub = app.add_subcommand(
      "usage",
      "Bytes each namespace holds (distinct chunks its versions reference) against its quota");
  sub->add_option("prefix", args->prefix,
                  "A namespace, or a name or prefix in it (team, team/run-1/model); default: "
                  "every namespace with checkpoints");
  sub->add_flag("--json", args->json, "Print a JSON array");
  table.Add(sub, [args](Context& ctx) { return RunUsage(ctx, *args); });
}

void AddHealthCommand(CLI::App& app, CommandTable& table) {
  CLI::App* sub = app.add_subcommand("health", "Print SERVING and exit 0 if the server serves");
  table.Add(sub, RunHealth);
}

void AddStatsCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<JsonArgs>();
  CLI::App* sub = app.add_subcommand("stats", "Server version, chunk size and storage totals");
  sub->add_flag("--json", args->json, "Print a JSON object");
  table.Add(sub, [args](Context& ctx) { return RunStats(ctx, *args); });
}

}  // namespace ckpt::cli
