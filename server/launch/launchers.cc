#include "server/launch/launchers.h"

namespace traind::launch {
namespace {

absl::Status CheckLocal(const trainer::v1::Distributed&, const LaunchSettings&) {
  return absl::OkStatus();
}

absl::Status CheckSlurm(const trainer::v1::Distributed&, const LaunchSettings&) {
  if (FindOnPath("sbatch") == "sbatch") {
    return absl::InvalidArgumentError(
        "distributed.launcher: SLURM needs Slurm's client commands (sbatch, scontrol, "
        "scancel) on the daemon's PATH");
  }
  return absl::OkStatus();
}

absl::Status CheckKubernetes(const trainer::v1::Distributed& dist, const LaunchSettings& settings) {
  if (settings.kube.api.empty() ||
      (settings.kube.image.empty() && dist.kubernetes().image().empty())) {
    return absl::InvalidArgumentError(
        "distributed.launcher: KUBERNETES needs the daemon to reach a Kubernetes API "
        "(in a pod, or --kube-api) and an image (--kube-image or distributed.kubernetes.image)");
  }
  return absl::OkStatus();
}

constexpr LauncherKind kLaunchers[] = {
    {trainer::v1::LOCAL_PROCESSES, "local ranks", /*remote=*/false, /*kill_on_cancel=*/false,
     CheckLocal, StartLocalRanks, /*keeper=*/nullptr},
    {trainer::v1::SLURM, "Slurm job", /*remote=*/true, /*kill_on_cancel=*/true, CheckSlurm,
     StartSlurmRanks, &kSlurmKeeper},
    {trainer::v1::KUBERNETES, "Kubernetes Job", /*remote=*/true, /*kill_on_cancel=*/false,
     CheckKubernetes, StartKubernetesRanks, /*keeper=*/nullptr},
};

}  // namespace

const LauncherKind* FindLauncher(trainer::v1::Launcher launcher) {
  for (const LauncherKind& kind : kLaunchers) {
    if (kind.launcher == launcher) return &kind;
  }
  return nullptr;
}

}  // namespace traind::launch
