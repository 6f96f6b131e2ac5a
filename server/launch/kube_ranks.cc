// KUBERNETES: an attempt is an Indexed Job (completions = parallelism =
// world_size, completionMode Indexed, backoffLimit 0), a headless Service so
// that rank 0 is <name>-0.<name>, and a Secret holding the attempt's secret.
// The code that talks to the API is kept small: create, read status, delete.
#include <httplib.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "server/launch/launchers.h"
#include "server/launch/rank_group.h"

namespace traind::launch {
namespace {

using json = nlohmann::json;

constexpr int kC10dPort = 29500;
// The unprivileged user rank containers run as: deploy/Dockerfile's traind.
constexpr int kRankUser = 10001;
constexpr char kLabel[] = "traind.io/attempt";

class Api {
 public:
  explicit Api(const KubeAccess& access) : access_(access) {}

  absl::Status Connect() {
    const std::string api = access_.api;
    if (!absl::StartsWith(api, "https://")) {
      return absl::InvalidArgumentError(absl::StrCat("Kubernetes API ", api, " is not https://"));
    }
    client_ = std::make_unique<httplib::SSLClient>(api.substr(8).substr(0, api.rfind(':') - 8),
                                                   Port(api));
    client_->set_ca_cert_path(access_.ca_file.c_str());
    client_->enable_server_certificate_verification(true);
    client_->set_connection_timeout(10);
    client_->set_read_timeout(30);
    auto token = ReadFile(access_.token_file);
    if (!token.ok()) return token.status();
    token_ = std::string(absl::StripAsciiWhitespace(*token));
    return absl::OkStatus();
  }

  // The response's status and body; status 0 when nothing answered.
  std::pair<int, json> Call(const std::string& method, const std::string& path,
                            const json& body = json()) {
    httplib::Headers headers = {{"Authorization", "Bearer " + token_},
                                {"Accept", "application/json"}};
    httplib::Result r =
        method == "POST" ? client_->Post(path.c_str(), headers, body.dump(), "application/json")
        : method == "DELETE"
            ? client_->Delete(path.c_str(), headers, body.is_null() ? std::string() : body.dump(),
                              "application/json")
            : client_->Get(path.c_str(), headers);
    if (!r) return {0, json()};
    json parsed = json::parse(r->body, nullptr, /*allow_exceptions=*/false);
    return {r->status, parsed.is_discarded() ? json() : parsed};
  }

 private:
  static int Port(const std::string& api) {
    const auto colon = api.rfind(':');
    return colon > 6 ? std::atoi(api.c_str() + colon + 1) : 443;
  }

  const KubeAccess access_;
  std::unique_ptr<httplib::SSLClient> client_;
  std::string token_;
};

std::string Describe(const std::pair<int, json>& r) {
  if (r.first == 0) return "the Kubernetes API did not answer";
  const std::string message = r.second.is_object() ? r.second.value("message", "") : "";
  return absl::StrCat("HTTP ", r.first, message.empty() ? "" : ": ", message);
}

class KubeRanks final : public RankGroup {
 public:
  KubeRanks(std::unique_ptr<Api> api, std::string ns, std::string name)
      : api_(std::move(api)), ns_(std::move(ns)), name_(std::move(name)) {}
  ~KubeRanks() override { Delete(); }

  GroupState Poll() override {
    if (ended_) return Seen();
    if (Clock::now() - last_poll_ < std::chrono::seconds(1)) return Seen();
    last_poll_ = Clock::now();
    auto job = api_->Call("GET", absl::StrCat("/apis/batch/v1/namespaces/", ns_, "/jobs/", name_));
    if (job.first == 404) {
      ended_ = true;
      if (!deleted_) {
        Trouble(GroupTrouble::kCancelledOutside,
                absl::StrCat("Kubernetes Job ", name_, " was deleted outside traind"));
      }
      return Seen();
    }
    if (job.first != 200) return Seen();  // the API is away: ask again
    for (const auto& c : job.second["status"].value("conditions", json::array())) {
      if (c.value("status", "") != "True") continue;
      if (c.value("type", "") == "Complete") {
        ended_ = true;
        return Seen();
      }
      if (c.value("type", "") == "Failed") {
        ended_ = true;
        Trouble(GroupTrouble::kRankLost,
                absl::StrCat("Kubernetes Job ", name_, " failed (", c.value("reason", ""), ": ",
                             c.value("message", ""), ")"));
        return Seen();
      }
    }
    auto pods = api_->Call("GET", absl::StrCat("/api/v1/namespaces/", ns_,
                                               "/pods?labelSelector=", kLabel, "%3D", name_));
    if (pods.first != 200) return Seen();
    std::vector<std::string> where, waiting;
    std::string failure;
    for (const auto& pod : pods.second.value("items", json::array())) {
      const std::string pod_name = pod["metadata"].value("name", "");
      const json& st = pod.value("status", json::object());
      const std::string phase = st.value("phase", "");
      const std::string reason = st.value("reason", "");
      if (reason == "Evicted" || phase == "Failed") {
        Trouble(
            GroupTrouble::kRankLost,
            absl::StrCat("pod ", pod_name, " ", reason == "Evicted" ? "was evicted" : "failed",
                         st.contains("message") ? absl::StrCat(" (", st.value("message", ""), ")")
                                                : std::string()));
        continue;
      }
      for (const auto& cs : st.value("containerStatuses", json::array())) {
        if (!cs.contains("state") || !cs["state"].contains("waiting")) continue;
        const std::string why = cs["state"]["waiting"].value("reason", "");
        if (why == "ErrImagePull" || why == "ImagePullBackOff" || why == "InvalidImageName") {
          failure = absl::StrCat("pod ", pod_name, " cannot pull its image (", why, ": ",
                                 cs["state"]["waiting"].value("message", ""), ")");
        } else if (!why.empty()) {
          waiting.push_back(absl::StrCat(pod_name, " ", why));
        }
      }
      if (phase == "Pending") {
        std::string why = "scheduling";
        for (const auto& c : st.value("conditions", json::array())) {
          if (c.value("type", "") == "PodScheduled" && c.value("status", "") == "False") {
            why = c.value("reason", "Unschedulable");
          }
        }
        waiting.push_back(absl::StrCat(pod_name, " pending (", why, ")"));
      } else if (phase == "Running") {
        where.push_back(absl::StrCat(pod_name, " on ",
                                     pod.value("spec", json::object()).value("nodeName", "?")));
      }
    }
    GroupState state = Seen();
    if (!failure.empty()) {
      state.trouble = GroupTrouble::kFailed;
      state.reason = failure;
    }
    std::sort(where.begin(), where.end());
    std::string note =
        !waiting.empty()
            ? absl::StrCat("Kubernetes Job ", name_, ": ", absl::StrJoin(waiting, ", "))
            : (where.empty()
                   ? ""
                   : absl::StrCat("Kubernetes Job ", name_, " runs: ", absl::StrJoin(where, ", ")));
    if (!note.empty() && note != last_note_) state.note = last_note_ = note;
    return state;
  }

  void Kill() override { Delete(); }
  std::string scheduler_job() const override { return name_; }

 private:
  using Clock = std::chrono::steady_clock;

  void Delete() {
    if (deleted_) return;
    deleted_ = true;
    const json background = {
        {"apiVersion", "v1"}, {"kind", "DeleteOptions"}, {"propagationPolicy", "Background"}};
    api_->Call("DELETE", absl::StrCat("/apis/batch/v1/namespaces/", ns_, "/jobs/", name_),
               background);
    api_->Call("DELETE", absl::StrCat("/api/v1/namespaces/", ns_, "/services/", name_));
    api_->Call("DELETE", absl::StrCat("/api/v1/namespaces/", ns_, "/secrets/", name_));
  }

  // The first trouble seen is the one reported.
  void Trouble(GroupTrouble trouble, std::string reason) {
    if (trouble_ != GroupTrouble::kNone) return;
    trouble_ = trouble;
    trouble_reason_ = std::move(reason);
  }

  // As last seen, between polls.
  GroupState Seen() const {
    GroupState state;
    state.phase = ended_ ? GroupPhase::kEnded : GroupPhase::kRunning;
    state.trouble = trouble_;
    state.reason = trouble_reason_;
    return state;
  }

  std::unique_ptr<Api> api_;
  const std::string ns_;
  const std::string name_;
  Clock::time_point last_poll_{};
  std::string last_note_;
  GroupTrouble trouble_ = GroupTrouble::kNone;
  std::string trouble_reason_;
  bool ended_ = false;
  bool deleted_ = false;
};

// A DNS-1123 label from the job and attempt: lowercase, <= 63 characters.
std::string ObjectName(const std::string& job_name) {
  std::string out;
  for (char c : absl::AsciiStrToLower(job_name)) {
    out += (absl::ascii_isalnum(c) || c == '-') ? c : '-';
  }
  if (out.size() > 52) out = out.substr(0, 52);  // pods add "-<index>-<suffix>"
  while (!out.empty() && out.back() == '-') out.pop_back();
  return out;
}

// The three objects of an attempt, as traind sends them (tests validate
// them against Kubernetes' schemas).
std::vector<json> KubernetesObjects(const LaunchRequest& request, const std::string& name) {
  const auto& k = request.dist.kubernetes();
  const json labels = {{kLabel, name}, {"app.kubernetes.io/managed-by", "traind"}};
  json job_labels = labels;
  if (!k.queue().empty()) job_labels["kueue.x-k8s.io/queue-name"] = k.queue();
  json env = json::array();
  env.push_back({{"name", "WORLD_SIZE"}, {"value", std::to_string(request.world_size)}});
  env.push_back({{"name", "MASTER_ADDR"}, {"value", absl::StrCat(name, "-0.", name)}});
  env.push_back({{"name", "MASTER_PORT"}, {"value", std::to_string(kC10dPort)}});
  for (const auto& kv : request.env) {
    if (absl::StartsWith(kv, "TRAIND_CONTROL=") || absl::StartsWith(kv, "TRAIND_ATTEMPT=")) {
      const auto eq = kv.find('=');
      env.push_back({{"name", kv.substr(0, eq)}, {"value", kv.substr(eq + 1)}});
    }
  }
  env.push_back({{"name", "TRAIND_ATTEMPT_SECRET"},
                 {"valueFrom", {{"secretKeyRef", {{"name", name}, {"key", "secret"}}}}}});
  env.push_back({{"name", "TRAIND_RANK_ADDR"},
                 {"valueFrom", {{"fieldRef", {{"fieldPath", "status.podIP"}}}}}});
  json resources = json::object();
  json amounts = json::object();
  if (!k.cpu().empty()) amounts["cpu"] = k.cpu();
  if (!k.memory().empty()) amounts["memory"] = k.memory();
  if (k.gpus() > 0) amounts["nvidia.com/gpu"] = std::to_string(k.gpus());
  if (!amounts.empty()) resources = {{"requests", amounts}, {"limits", amounts}};
  json container = {{"name", "rank"},
                    {"image", k.image().empty() ? request.kube.image : k.image()},
                    {"command", {request.kube.worker_command, "worker"}},
                    {"env", env},
                    {"ports", {{{"name", "c10d"}, {"containerPort", kC10dPort}}}}};
  if (!resources.empty()) container["resources"] = resources;
  // Kubernetes' "restricted" Pod Security Standard: not root, no privilege
  // escalation, no capabilities, the runtime's seccomp profile, and a
  // read-only root filesystem with a scratch folder for temporary files.
  container["securityContext"] = {{"allowPrivilegeEscalation", false},
                                  {"readOnlyRootFilesystem", true},
                                  {"capabilities", {{"drop", {"ALL"}}}}};
  container["env"].push_back({{"name", "TMPDIR"}, {"value", "/tmp"}});
  container["volumeMounts"] = {{{"name", "scratch"}, {"mountPath", "/tmp"}}};
  json pod_spec = {{"subdomain", name},
                   {"restartPolicy", "Never"},
                   {"securityContext",
                    {{"runAsNonRoot", true},
                     {"runAsUser", kRankUser},
                     {"runAsGroup", kRankUser},
                     {"seccompProfile", {{"type", "RuntimeDefault"}}}}}};
  pod_spec["volumes"] = {{{"name", "scratch"}, {"emptyDir", json::object()}}};
  if (!request.kube.data_claim.empty()) {
    container["volumeMounts"].push_back(
        {{"name", "data"}, {"mountPath", request.kube.data_mount}, {"readOnly", true}});
    pod_spec["volumes"].push_back(
        {{"name", "data"},
         {"persistentVolumeClaim", {{"claimName", request.kube.data_claim}, {"readOnly", true}}}});
  }
  pod_spec["containers"] = json::array({container});
  if (!k.priority_class().empty()) pod_spec["priorityClassName"] = k.priority_class();
  for (const auto& t : k.tolerations()) {
    json tol = json::object();
    if (!t.key().empty()) tol["key"] = t.key();
    if (!t.operator_().empty()) tol["operator"] = t.operator_();
    if (!t.value().empty()) tol["value"] = t.value();
    if (!t.effect().empty()) tol["effect"] = t.effect();
    if (t.has_toleration_seconds()) tol["tolerationSeconds"] = t.toleration_seconds();
    pod_spec["tolerations"].push_back(tol);
  }
  if (!k.node_selector().empty()) {
    json selector = json::object();  // keys sorted: the object is the same whatever map order
    for (const auto& [key, value] : k.node_selector()) selector[key] = value;
    pod_spec["nodeSelector"] = selector;
  }
  json secret = {{"apiVersion", "v1"},
                 {"kind", "Secret"},
                 {"metadata", {{"name", name}, {"labels", labels}}},
                 {"type", "Opaque"},
                 {"stringData", {{"secret", request.attempt_secret}}}};
  json service = {{"apiVersion", "v1"},
                  {"kind", "Service"},
                  {"metadata", {{"name", name}, {"labels", labels}}},
                  {"spec",
                   {{"clusterIP", "None"},
                    {"publishNotReadyAddresses", true},
                    {"selector", {{kLabel, name}}},
                    {"ports", {{{"name", "c10d"}, {"port", kC10dPort}}}}}}};
  json job = {{"apiVersion", "batch/v1"},
              {"kind", "Job"},
              {"metadata", {{"name", name}, {"labels", job_labels}}},
              {"spec",
               {{"completions", request.world_size},
                {"parallelism", request.world_size},
                {"completionMode", "Indexed"},
                {"backoffLimit", 0},
                {"template", {{"metadata", {{"labels", labels}}}, {"spec", pod_spec}}}}}};
  return {secret, service, job};
}

}  // namespace

absl::StatusOr<std::unique_ptr<RankGroup>> StartKubernetesRanks(const LaunchRequest& request) {
  auto api = std::make_unique<Api>(request.kube);
  if (auto st = api->Connect(); !st.ok()) return st;
  const std::string ns = request.kube.namespace_;
  const std::string name = ObjectName(request.job_name);
  const auto objects = KubernetesObjects(request, name);
  const std::string paths[] = {absl::StrCat("/api/v1/namespaces/", ns, "/secrets"),
                               absl::StrCat("/api/v1/namespaces/", ns, "/services"),
                               absl::StrCat("/apis/batch/v1/namespaces/", ns, "/jobs")};
  for (size_t i = 0; i < objects.size(); ++i) {
    auto r = api->Call("POST", paths[i], objects[i]);
    if (r.first != 201 && r.first != 200) {
      // The group deletes what was created before the refusal.
      KubeRanks cleanup(std::move(api), ns, name);
      return absl::FailedPreconditionError(absl::StrCat(
          "Kubernetes refused the ", objects[i].value("kind", ""), " ", name, ": ", Describe(r)));
    }
  }
  return std::unique_ptr<RankGroup>(new KubeRanks(std::move(api), ns, name));
}

}  // namespace traind::launch
