// traind: parses flags into Server::Options, starts, waits for a signal.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "common/cpu_budget.h"
#include "common/file_util.h"
#include "common/flags.h"
#include "server/server.h"
#include "server/train/allocator.h"
#include "server/train/intra_op.h"
#include "server/train/split_backward.h"
#include "server/worker/rank.h"

namespace {

std::string DefaultStateDir() {
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg && *xdg) {
    return std::string(xdg) + "/traind";
  }
  if (const char* home = std::getenv("HOME"); home && *home) {
    return std::string(home) + "/.local/state/traind";
  }
  return "traind-state";
}

}  // namespace

ABSL_FLAG(std::string, listen, "127.0.0.1:50051",
          "host:port to serve on; port 0 picks a free port");
ABSL_FLAG(std::string, port_file, "", "write the bound port to this file once serving");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain of the server (enables TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of the server");
ABSL_FLAG(std::string, tls_client_ca, "",
          "require client certificates signed by this CA (PEM): mutual TLS");
ABSL_FLAG(std::string, tokens_file, "",
          "bearer tokens: lines of '<sha256 hex of token> <user> [admin]'; re-read on SIGHUP");
ABSL_FLAG(std::string, policy_file, "",
          "quotas and priority rights per user (JSON: {\"default\": {...}, \"users\": "
          "{\"alice\": {...}}}, see the README); re-read on SIGHUP");
ABSL_FLAG(int, max_queued_per_user, 100, "queued jobs allowed per user");
ABSL_FLAG(int, max_queued, 1000, "queued jobs allowed in all");
ABSL_FLAG(int, max_streams_per_user, 16, "open StreamMetrics calls allowed per user");
ABSL_FLAG(int, serving_nice, 0,
          "nice value (0-19) of the threads that serve calls; training threads keep the "
          "daemon's, so serving yields to training when CPU is short");
ABSL_FLAG(int, max_stream_seconds, 3600,
          "StreamMetrics and GetWeights calls end with DEADLINE_EXCEEDED after this long "
          "(clients resume)");
ABSL_FLAG(bool, insecure, false,
          "allow plaintext or no tokens on a non-loopback address (logs a warning)");
ABSL_FLAG(std::string, metrics_listen, "",
          "serve Prometheus metrics over HTTP at host:port/metrics (port 0: a free port); "
          "empty: off");
ABSL_FLAG(std::string, http_listen, "",
          "serve the HTTP JSON API, event streams and the web dashboard at host:port (port 0: "
          "a free port; same TLS, tokens and loopback rule as --listen); empty: off");
ABSL_FLAG(std::string, http_port_file, "",
          "write the bound HTTP port to this file once serving (with --http-listen)");
ABSL_FLAG(std::vector<std::string>, http_allowed_hosts, {},
          "host names (comma-separated; '*.example.com' for a domain, '*' for any) that "
          "HTTP requests may name in their Host header besides IP addresses, localhost and "
          "--http-listen's host; others get 421 (the DNS-rebinding guard). Set the name "
          "users reach traind by, e.g. behind a proxy or TLS");
ABSL_FLAG(int, http_threads, 64,
          "threads serving HTTP; each open event stream holds one, and streams may take all "
          "but 4 of them");
ABSL_FLAG(std::string, state_dir, DefaultStateDir(),
          "folder of the job database and per-job artifacts");
ABSL_FLAG(std::string, data_root, "",
          "datasets are named relative to this folder (default: <state_dir>/data)");
ABSL_FLAG(std::string, weights_root, "",
          "pretrained weights are named relative to this folder "
          "(default: <state_dir>/weights)");
ABSL_FLAG(int, workers, 1,
          "slots: jobs trained at the same time; a LOCAL_PROCESSES job of world size N takes N "
          "(all of them when N is larger)");
ABSL_FLAG(int, threads_per_job, 0,
          "intra-op threads of a job whose spec does not say (0: the cores this process may "
          "use, its CPUs capped by its cgroup's CPU quota, / workers)");
ABSL_FLAG(bool, adaptive_threads, false,
          "default of a job's adaptive_threads: its intra-op thread count follows contention "
          "(fewer threads while other work shares the cores, probing back up); such jobs are "
          "not bit-reproducible. For a shared node");
ABSL_FLAG(bool, winograd, true,
          "default of a job's winograd: float32 3x3 convolutions as oneDNN's Winograd kernels "
          "where the CPU has them (AVX-512), float32 steps 1.3-1.5x faster; each step agrees "
          "with PyTorch's within 1e-5 of its scale, not to the bit "
          "(server/train/winograd_conv.h)");
ABSL_FLAG(bool, split_backward, true,
          "with winograd on 2 intra-op threads, a step's backward pass runs the input gradients "
          "on one thread and the convolutions' weight gradients on the other, so a neighbour "
          "that displaces one thread does not stall the other (server/train/split_backward.h); "
          "false: both threads on each operator. Process-wide, for side-by-side timing");
ABSL_FLAG(int, grace_seconds, 10, "how long shutdown waits for open calls");
ABSL_FLAG(int, keep_checkpoints, 2, "checkpoints kept per job, newest first (at least 1)");
ABSL_FLAG(std::string, rank_wrapper, "",
          "distributed jobs: a command put before each local rank's `traind worker`, "
          "{rank} replaced by its rank (e.g. 'numactl --cpunodebind={rank}' or "
          "'ip netns exec ns{rank} env TRAIND_RANK_ADDR=...')");
ABSL_FLAG(std::string, rank_control_address, "",
          "distributed jobs on other machines (SLURM): the host:port or unix:PATH their ranks "
          "dial to reach this daemon (default: the listening address)");
ABSL_FLAG(std::string, slurm_partition, "", "SLURM launcher: the default sbatch --partition");
ABSL_FLAG(std::string, slurm_account, "", "SLURM launcher: the default sbatch --account");
ABSL_FLAG(std::string, kube_api, "",
          "KUBERNETES launcher: the API server, https://host:port (default in a pod: "
          "KUBERNETES_SERVICE_HOST and _PORT)");
ABSL_FLAG(std::string, kube_token_file, "/var/run/secrets/kubernetes.io/serviceaccount/token",
          "KUBERNETES launcher: the bearer token file");
ABSL_FLAG(std::string, kube_ca_file, "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
          "KUBERNETES launcher: the API server's CA (PEM)");
ABSL_FLAG(std::string, kube_namespace, "",
          "KUBERNETES launcher: where rank pods go (default: the pod's own namespace)");
ABSL_FLAG(std::string, kube_image, "", "KUBERNETES launcher: the default rank image");
ABSL_FLAG(std::string, kube_worker_command, "/usr/local/bin/traind",
          "KUBERNETES launcher: traind's path inside the rank image");
ABSL_FLAG(std::string, kube_data_claim, "",
          "KUBERNETES launcher: a PersistentVolumeClaim with the datasets, mounted read-only in "
          "every rank pod at --data-root");
ABSL_FLAG(int, max_attempts_without_progress, 3,
          "a job whose runs end this many times in a row (daemon crashes) without a new "
          "checkpoint is FAILED instead of run again");

int main(int argc, char** argv) {
  // `traind worker`: one rank of a distributed job (server/worker/rank.h).
  if (argc > 1 && std::string(argv[1]) == "worker") return traind::worker::RunWorker();
  absl::SetProgramUsageMessage(
      "traind: the training-job daemon. Usage: traind [--listen=HOST:PORT] "
      "[--state-dir=DIR] [--data-root=DIR] [--weights-root=DIR] [--workers=N]");
  std::vector<std::string> args = traind::NormalizeFlagDashes(argc, argv);
  if (traind::PrintHelpIfAsked(args, "traind_main")) return 0;
  std::vector<char*> argp;
  for (auto& a : args) argp.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(argp.size()), argp.data());

  // Before any tensor and any thread: every thread inherits the blocked
  // signals, and main alone takes them with sigwait.
  traind::train::TuneAllocator();
  traind::train::SerialIntraOpByDefault();
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // Images over this many pixels are refused before decoding (a PNG header
  // may claim 60000 x 60000). OpenCV reads it when it first decodes.
  setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "100000000", /*overwrite=*/0);

  traind::Server::Options options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.port_file = absl::GetFlag(FLAGS_port_file);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  options.http_port_file = absl::GetFlag(FLAGS_http_port_file);
  options.http_allowed_hosts = absl::GetFlag(FLAGS_http_allowed_hosts);
  options.http_threads = std::max(5, absl::GetFlag(FLAGS_http_threads));
  options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  options.tokens_file = absl::GetFlag(FLAGS_tokens_file);
  options.policy_file = absl::GetFlag(FLAGS_policy_file);
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.limits.max_streams_per_user = std::max(1, absl::GetFlag(FLAGS_max_streams_per_user));
  options.limits.max_stream_seconds = std::max(1, absl::GetFlag(FLAGS_max_stream_seconds));
  options.limits.serving_nice = std::clamp(absl::GetFlag(FLAGS_serving_nice), 0, 19);
  auto& jobs = options.jobs;
  jobs.state_dir = absl::GetFlag(FLAGS_state_dir);
  jobs.data_root = absl::GetFlag(FLAGS_data_root);
  if (jobs.data_root.empty()) jobs.data_root = jobs.state_dir + "/data";
  jobs.weights_root = absl::GetFlag(FLAGS_weights_root);
  if (jobs.weights_root.empty()) jobs.weights_root = jobs.state_dir + "/weights";
  jobs.workers = absl::GetFlag(FLAGS_workers);
  jobs.max_queued_per_user = std::max(1, absl::GetFlag(FLAGS_max_queued_per_user));
  jobs.max_queued = std::max(1, absl::GetFlag(FLAGS_max_queued));
  jobs.keep_checkpoints = std::max(1, absl::GetFlag(FLAGS_keep_checkpoints));
  jobs.max_attempts_without_progress =
      std::max(1, absl::GetFlag(FLAGS_max_attempts_without_progress));
  // Not the machine's core count: a container's CPU quota or a taskset
  // leaves fewer, and threads beyond them only wait for each other.
  const traind::CpuBudget budget = traind::ReadCpuBudget();
  const int cores = budget.cores;
  jobs.threads_per_job = absl::GetFlag(FLAGS_threads_per_job);
  jobs.adaptive_threads = absl::GetFlag(FLAGS_adaptive_threads);
  jobs.winograd = absl::GetFlag(FLAGS_winograd);
  traind::train::SetSplitBackwardEnabled(absl::GetFlag(FLAGS_split_backward));
  if (jobs.threads_per_job <= 0) jobs.threads_per_job = std::max(1, cores / std::max(1, jobs.workers));

  // Ranks run this very binary, found now (a wrapper would change /proc/self).
  std::error_code exe_error;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", exe_error);
  if (!exe_error) options.worker_binary = exe.string();
  for (absl::string_view w :
       absl::StrSplit(absl::GetFlag(FLAGS_rank_wrapper), ' ', absl::SkipEmpty())) {
    options.rank_wrapper.emplace_back(w);
  }
  options.rank_control_address = absl::GetFlag(FLAGS_rank_control_address);
  options.launch.slurm.partition = absl::GetFlag(FLAGS_slurm_partition);
  options.launch.slurm.account = absl::GetFlag(FLAGS_slurm_account);
  auto& kube = options.launch.kube;
  kube.api = absl::GetFlag(FLAGS_kube_api);
  const char* kube_host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* kube_port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (kube.api.empty() && kube_host && kube_port) {
    kube.api = std::string("https://") + kube_host + ":" + kube_port;
  }
  kube.token_file = absl::GetFlag(FLAGS_kube_token_file);
  kube.ca_file = absl::GetFlag(FLAGS_kube_ca_file);
  kube.namespace_ = absl::GetFlag(FLAGS_kube_namespace);
  if (kube.namespace_.empty()) {
    auto ns = traind::ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace");
    kube.namespace_ = ns.ok() && !ns->empty() ? *ns : "default";
  }
  kube.image = absl::GetFlag(FLAGS_kube_image);
  kube.worker_command = absl::GetFlag(FLAGS_kube_worker_command);
  kube.data_claim = absl::GetFlag(FLAGS_kube_data_claim);
  kube.data_mount = jobs.data_root;
  auto server = traind::Server::BuildAndStart(options);
  if (!server.ok()) {
    std::fprintf(stderr, "traind: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  const std::string host = options.listen.substr(0, options.listen.rfind(':'));
  const std::string where = options.listen.rfind("unix:", 0) == 0
                                ? options.listen
                                : host + ":" + std::to_string((*server)->port());
  std::printf(
      "traind: serving on %s (state %s, data root %s, weights root %s, %d worker(s), "
      "%d thread(s) per job)\n",
      where.c_str(), jobs.state_dir.c_str(), jobs.data_root.c_str(),
      jobs.weights_root.c_str(), jobs.workers, jobs.threads_per_job);
  if (budget.quota_cores > 0) {
    std::printf("traind: CPU budget %d core(s): %d CPU(s), cgroup quota %.2f core(s)\n",
                budget.cores, budget.affinity_cpus, budget.quota_cores);
  }
  if ((*server)->metrics_port() > 0) {
    const std::string& m = options.metrics_listen;
    std::printf("traind: metrics on http://%s:%d/metrics\n", m.substr(0, m.rfind(':')).c_str(),
                (*server)->metrics_port());
  }
  if ((*server)->http_port() > 0) {
    const std::string& h = options.http_listen;
    std::string web_host = h.substr(0, h.rfind(':'));
    if (web_host.empty() || web_host == "0.0.0.0" || web_host == "[::]") web_host = "localhost";
    std::printf("traind: dashboard and HTTP API on %s://%s:%d/\n",
                options.tls_cert.empty() ? "http" : "https", web_host.c_str(),
                (*server)->http_port());
  }
  std::fflush(stdout);

  int sig = 0;
  while (sigwait(&signals, &sig) == 0 && sig == SIGHUP) {
    if (!options.tokens_file.empty()) {
      const absl::Status st = (*server)->ReloadTokens();
      std::printf("traind: SIGHUP: %s\n",
                  st.ok() ? "tokens reloaded" : std::string(st.message()).c_str());
    }
    if (!options.policy_file.empty()) {
      const absl::Status st = (*server)->ReloadPolicy();
      std::printf("traind: SIGHUP: %s\n",
                  st.ok() ? "policy reloaded" : std::string(st.message()).c_str());
    }
    std::fflush(stdout);
  }
  std::printf("traind: %s received, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  std::fflush(stdout);
  (*server)->Shutdown(absl::Seconds(absl::GetFlag(FLAGS_grace_seconds)));
  std::printf("traind: stopped\n");
  return 0;
}
