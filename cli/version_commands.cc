// rm, tag, untag, retention and prune: the commands that change a
// checkpoint's versions and tags.

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

// ------------------------------------------------------------------ rm

struct RmArgs {
  std::string ref;
  bool force = false;
  bool all = false;
};

// rm NAME --all: every version, oldest first. Checks the tags first, so that
// without --force a tagged version refuses the whole command before anything
// is deleted.
absl::Status RunRmAll(Context& ctx, const RmArgs& args) {
  if (args.ref.find('@') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rm --all takes a NAME without @VERSION or @TAG, got '", Printable(args.ref), "'"));
  }
  CKPT_RETURN_IF_ERROR(ValidateName(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(auto versions, client->ListVersions(args.ref));
  if (!args.force) {
    std::vector<std::string> tagged;
    for (const VersionInfo& v : versions) {
      std::vector<std::string> user_tags;
      for (const std::string& t : v.tags) {
        if (t != kLatestTag) user_tags.push_back(t);
      }
      if (!user_tags.empty()) {
        tagged.push_back(absl::StrCat(v.version, " (", absl::StrJoin(user_tags, ","), ")"));
      }
    }
    if (!tagged.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat("not deleting ", args.ref, ": tagged versions ", absl::StrJoin(tagged, ", "),
                       "; nothing was deleted (--force deletes them and removes their tags)"));
    }
  }
  std::vector<uint64_t> deleted;
  uint64_t chunks = 0;
  for (const VersionInfo& v : versions) {
    auto released = client->DeleteVersion(args.ref, v.version, args.force);
    if (!released.ok()) {
      return Annotate(released.status(),
                      absl::StrCat("cannot delete ", args.ref, "@", v.version, " (deleted before: ",
                                   deleted.empty() ? "none" : absl::StrJoin(deleted, ", "), ")"));
    }
    deleted.push_back(v.version);
    chunks += *released;
  }
  ctx.out() << "deleted " << args.ref << " versions: " << absl::StrJoin(deleted, ", ") << " ("
            << chunks << " chunks released)\n";
  return absl::OkStatus();
}

absl::Status RunRm(Context& ctx, const RmArgs& args) {
  if (args.all) return RunRmAll(ctx, args);
  // Deleting is not undoable: never pick a version the user did not name.
  if (args.ref.find('@') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("rm needs NAME@VERSION or NAME@TAG (or NAME --all for every version), got '",
                     Printable(args.ref), "'"));
  }
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(uint64_t version, ResolveVersion(*client, ref));
  auto released = client->DeleteVersion(ref.name, version, args.force);
  if (!released.ok()) {
    absl::Status status =
        Annotate(released.status(), absl::StrCat("cannot delete ", ref.name, "@", version));
    if (status.code() == absl::StatusCode::kFailedPrecondition && !args.force) {
      return absl::FailedPreconditionError(
          absl::StrCat(status.message(), " (--force deletes it and removes its tags)"));
    }
    return status;
  }
  ctx.out() << "deleted " << ref.name << "@" << version << " (" << *released
            << " chunks released)\n";
  return absl::OkStatus();
}

// ----------------------------------------------------------- tag, untag

struct TagArgs {
  std::string ref;
  std::string tag;
};

absl::Status RunTag(Context& ctx, const TagArgs& args) {
  CKPT_ASSIGN_OR_RETURN(VersionRef ref, ParseVersionRef(args.ref));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(args.tag));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  // A tag is pinned to a number: NAME or NAME@TAG is resolved now, so the
  // new tag does not follow the other one later.
  CKPT_ASSIGN_OR_RETURN(uint64_t version, ResolveVersion(*client, ref));
  CKPT_RETURN_IF_ERROR(client->SetTag(ref.name, args.tag, version));
  ctx.out() << "tagged " << ref.name << "@" << version << " as " << args.tag << "\n";
  return absl::OkStatus();
}

struct UntagArgs {
  std::string name;
  std::string tag;
};

absl::Status RunUntag(Context& ctx, const UntagArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_RETURN_IF_ERROR(ValidateUserTag(args.tag));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_RETURN_IF_ERROR(client->DeleteTag(args.name, args.tag));
  ctx.out() << "removed tag " << args.tag << " from " << args.name << "\n";
  return absl::OkStatus();
}

// ---------------------------------------------------- retention, prune

struct RetentionArgs {
  std::string name;
  RetentionPolicy policy;
  bool clear = false;
};

std::string VersionList(const std::vector<uint64_t>& versions) {
  return versions.empty() ? "none" : absl::StrJoin(versions, ", ");
}

absl::Status RunRetention(Context& ctx, const RetentionArgs& args, bool setting) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  if (!setting) {
    CKPT_ASSIGN_OR_RETURN(RetentionPolicy policy, client->GetRetention(args.name));
    ctx.out() << "retention of " << args.name << ": " << DescribeRetentionPolicy(policy) << "\n";
    return absl::OkStatus();
  }
  if (args.clear && !(args.policy == RetentionPolicy{})) {
    return absl::InvalidArgumentError("--clear takes no other retention option");
  }
  // Checked here too, so a bad command line fails before connecting.
  CKPT_RETURN_IF_ERROR(ValidateRetentionPolicy(args.policy));
  if (!args.clear && !args.policy.enabled()) {
    return absl::InvalidArgumentError(
        "give --keep-last or --keep-best (or --clear to remove the policy)");
  }
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> would, client->SetRetention(args.name, args.policy));
  ctx.out() << "retention of " << args.name << ": " << DescribeRetentionPolicy(args.policy) << "\n";
  if (!args.clear) {
    ctx.out() << "applied after each save; versions it would delete now: " << VersionList(would)
              << "\n";
  }
  return absl::OkStatus();
}

struct PruneArgs {
  std::string name;
  bool dry_run = false;
};

absl::Status RunPrune(Context& ctx, const PruneArgs& args) {
  CKPT_RETURN_IF_ERROR(ValidateName(args.name));
  CKPT_ASSIGN_OR_RETURN(RawClient * client, ctx.Client());
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> versions, client->Prune(args.name, args.dry_run));
  ctx.out() << (args.dry_run ? "would delete " : "deleted ") << args.name
            << " versions: " << VersionList(versions) << "\n";
  return absl::OkStatus();
}

}  // namespace

void AddRmCommand(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<RmArgs>();
  CLI::App* sub = app.add_subcommand(
      "rm", "Delete one version, or every version with --all (chunks are freed by gc)");
  sub->add_option("ref", args->ref,
                  "NAME@VERSION, NAME@TAG for the version TAG names, or NAME with --all")
      ->required();
  sub->add_flag("--all", args->all, "Delete every version of NAME");
  sub->add_flag("--force", args->force, "Delete even if user tags point at it (removes them)");
  table.Add(sub, [args](Context& ctx) { return RunRm(ctx, *args); });
}

void AddTagCommands(CLI::App& app, CommandTable& table) {
  auto tag_args = std::make_shared<TagArgs>();
  CLI::App* tag = app.add_subcommand("tag", "Point TAG at a version (moves it if it exists)");
  tag->add_option("ref", tag_args->ref, "NAME@VERSION (NAME or NAME@OTHER_TAG: resolved now)")
      ->required();
  tag->add_option("tag", tag_args->tag, "Tag to set: [A-Za-z0-9._-], not all digits")->required();
  table.Add(tag, [tag_args](Context& ctx) { return RunTag(ctx, *tag_args); });

  auto untag_args = std::make_shared<UntagArgs>();
  CLI::App* untag = app.add_subcommand("untag", "Remove a tag from a checkpoint");
  untag->add_option("name", untag_args->name, "Checkpoint name")->required();
  untag->add_option("tag", untag_args->tag, "Tag to remove")->required();
  table.Add(untag, [untag_args](Context& ctx) { return RunUntag(ctx, *untag_args); });
}

void AddRetentionCommands(CLI::App& app, CommandTable& table) {
  auto args = std::make_shared<RetentionArgs>();
  CLI::App* sub = app.add_subcommand(
      "retention",
      "Show or set which versions of a name to keep (applied after each save): a version is "
      "kept if any rule keeps it; tagged versions and the newest are always kept");
  sub->add_option("name", args->name, "Checkpoint name")->required();
  sub->add_option("--keep-last", args->policy.keep_last, "Keep the newest N versions");
  sub->add_option("--keep-every-steps", args->policy.keep_every_steps,
                  "Also keep versions whose step is a multiple of K");
  sub->add_option("--keep-best", args->policy.keep_best, "Keep the N best versions by --metric");
  sub->add_option("--metric", args->policy.metric,
                  "Metadata key holding a number, e.g. loss (lower is better)");
  sub->add_flag("--higher-is-better", args->policy.higher_is_better,
                "For --metric: higher values are better (e.g. accuracy)");
  sub->add_flag("--clear", args->clear, "Remove the policy (keep every version)");
  table.Add(sub, [args, sub](Context& ctx) {
    const bool setting = sub->count("--keep-last") + sub->count("--keep-every-steps") +
                             sub->count("--keep-best") + sub->count("--metric") +
                             sub->count("--higher-is-better") + sub->count("--clear") >
                         0;
    return RunRetention(ctx, *args, setting);
  });

  auto prune_args = std::make_shared<PruneArgs>();
  CLI::App* prune =
      app.add_subcommand("prune", "Apply a name's retention policy now (chunks are freed by gc)");
  prune->add_option("name", prune_args->name, "Checkpoint name")->required();
  prune->add_flag("--dry-run", prune_args->dry_run, "Only list what would be deleted");
  table.Add(prune, [prune_args](Context& ctx) { return RunPrune(ctx, *prune_args); });
}

}  // namespace ckpt::cli
