// trainctl entry point: flags, then the subcommand.
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "client/trainctl.h"
#include "common/flags.h"

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "trainctl: drive traind.\n"
      "  trainctl submit --dataset=NAME [--kind=scratch|finetune|sweep] [...] [--watch]\n"
      "  trainctl submit -f job.json [--watch]\n"
      "  trainctl watch JOB | status JOB | list | cancel JOB\n"
      "  trainctl pause JOB | resume JOB   (stops at a checkpoint, frees its slots; continues)\n"
      "  trainctl priority JOB low|normal|high|urgent\n"
      "  trainctl weights JOB -o FILE [--format=pth|safetensors] [--trial=T]\n"
      "                   (continues an interrupted download; a sweep's best trial by default)\n"
      "  trainctl delete JOB    (a finished job: its events, checkpoints and weights)\n"
      "  trainctl tensorboard [JOB]   (prints the tensorboard --logdir to use)\n"
      "  trainctl plot JOB -o curves.png\n"
      "  trainctl report JOB [--confusion confusion.png]\n"
      "  trainctl classify JOB IMAGE [IMAGE ...] [--top=5] [--trial=T]\n"
      "  trainctl demo-data DIR [--classes=4] [--per_class=150]\n"
      "Global: --server=HOST:PORT (or $TRAINCTL_SERVER), --output=human|json,\n"
      "        --token (or $TRAINCTL_TOKEN), --tls-ca, --tls-cert, --tls-key\n"
      "        (or $TRAINCTL_TLS_CA, $TRAINCTL_TLS_CERT, $TRAINCTL_TLS_KEY)");
  std::vector<std::string> args = traind::NormalizeFlagDashes(argc, argv);
  if (traind::PrintHelpIfAsked(args, "client/")) return 0;
  std::vector<char*> argp;
  for (auto& a : args) argp.push_back(a.data());
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());
  return traind::client::RunTrainctl(std::vector<std::string>(positional.begin(), positional.end()));
}
