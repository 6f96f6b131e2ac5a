// The launchers, one entry per value of the spec's `Launcher`: what each
// checks at submit, how it starts an attempt's ranks, and whether those
// ranks outlive the daemon. Registration is the table in launchers.cc; the
// distributed engine asks the table and never names a launcher.
//
// Thread-safety: the table is constant.
#ifndef TRAIND_SERVER_LAUNCH_LAUNCHERS_H_
#define TRAIND_SERVER_LAUNCH_LAUNCHERS_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/launch/rank_group.h"
#include "trainer/v1/training_service.pb.h"

namespace traind::launch {

// An attempt whose ranks outlive a daemon restart, as kept in the job's
// folder (the state directory is the daemon's alone).
struct KeptAttempt {
  std::string attempt;
  std::string secret;
  std::string scheduler_job;
  // The control address its ranks dial (TRAIND_CONTROL); empty in records
  // from before it was kept.
  std::string control;
};

// A kept attempt taken up again, and the group following its ranks.
struct TakenUp {
  KeptAttempt record;
  std::unique_ptr<RankGroup> group;
};

// How a launcher whose ranks keep training through a daemon restart keeps
// their attempt.
struct AttemptKeeper {
  absl::Status (*save)(const std::string& work_dir, const KeptAttempt& record);
  // The kept record, if its ranks still pend or run; changes nothing.
  std::optional<KeptAttempt> (*peek)(const std::string& work_dir,
                                     const std::vector<std::string>& env);
  // The same, with a group following the ranks; a stale record is removed.
  std::optional<TakenUp> (*take_up)(const std::string& work_dir,
                                    const std::vector<std::string>& env);
  // Removes the record (the attempt ended).
  void (*forget)(const std::string& work_dir);
};

struct LauncherKind {
  trainer::v1::Launcher launcher;
  // What the scheduler calls an attempt ("Slurm job"), before its id.
  const char* attempt_noun;
  // Ranks may run on other machines: they dial the control link's remote
  // address when the daemon has one.
  bool remote;
  // A user's cancel ends the ranks at once (no checkpoint is needed), so
  // that the scheduler's accounting says CANCELLED.
  bool kill_on_cancel;
  // OK when this daemon can start ranks this way; INVALID_ARGUMENT naming
  // the field otherwise.
  absl::Status (*check)(const trainer::v1::Distributed& dist, const LaunchSettings& settings);
  absl::StatusOr<std::unique_ptr<RankGroup>> (*start)(const LaunchRequest& request);
  // Non-null when the ranks outlive the daemon (SLURM).
  const AttemptKeeper* keeper;
};

// The entry for `launcher`; nullptr when this traind has none.
const LauncherKind* FindLauncher(trainer::v1::Launcher launcher);

// The launchers' own parts (local_ranks.cc, slurm_ranks.cc, kube_ranks.cc).
absl::StatusOr<std::unique_ptr<RankGroup>> StartLocalRanks(const LaunchRequest& request);
absl::StatusOr<std::unique_ptr<RankGroup>> StartSlurmRanks(const LaunchRequest& request);
// A Secret (the attempt's secret), a headless Service (rank 0's name) and an
// Indexed Job, created through the API; deleted when the group ends.
absl::StatusOr<std::unique_ptr<RankGroup>> StartKubernetesRanks(const LaunchRequest& request);
extern const AttemptKeeper kSlurmKeeper;
// Where the Slurm attempt's record is kept in a job's folder.
std::string SlurmAttemptPath(const std::string& work_dir);

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_LAUNCHERS_H_
