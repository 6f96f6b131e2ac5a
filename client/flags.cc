#include "client/flags.h"

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, server, "",
          "traind address host:port (default $TRAINCTL_SERVER, else 127.0.0.1:50051)");
ABSL_FLAG(std::string, output, "human", "human or json");
ABSL_FLAG(std::string, token, "", "bearer token (or $TRAINCTL_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "TLS: CA certificate to verify traind with (or $TRAINCTL_TLS_CA)");
ABSL_FLAG(std::string, tls_cert, "",
          "mutual TLS: client certificate (or $TRAINCTL_TLS_CERT)");
ABSL_FLAG(std::string, tls_key, "", "mutual TLS: client key (or $TRAINCTL_TLS_KEY)");
// submit
ABSL_FLAG(std::string, f, "", "submit: read the JobSpec from this JSON file");
ABSL_FLAG(std::string, kind, "", "submit: finetune, scratch or sweep (default finetune)");
ABSL_FLAG(std::string, dataset, "", "submit: dataset folder name under the data root");
ABSL_FLAG(std::string, epochs, "", "submit: epochs (default 5)");
ABSL_FLAG(std::string, batch_size, "", "submit: images per batch (default 32)");
ABSL_FLAG(std::string, image_size, "", "submit: image side in pixels (default 128)");
ABSL_FLAG(std::string, lr, "", "submit: classifier (or scratch) learning rate (default 1e-3)");
ABSL_FLAG(std::string, backbone_lr, "", "submit: trainable-block learning rate (default 1e-4)");
ABSL_FLAG(std::string, train_fraction, "", "submit: share of images trained on (default 0.8)");
ABSL_FLAG(std::string, seed, "", "submit: seed (default 0)");
ABSL_FLAG(std::string, trainable, "", "submit: comma-separated blocks (default layer3,layer4)");
ABSL_FLAG(std::string, device, "", "submit: auto, cpu or cuda (default auto)");
ABSL_FLAG(std::string, threads, "", "submit: intra-op threads (default: the daemon's)");
ABSL_FLAG(std::string, loader_threads, "", "submit: image-loading threads (default 2)");
ABSL_FLAG(std::string, precision, "", "submit: fp32 or bf16 (default fp32)");
ABSL_FLAG(std::string, priority, "",
          "submit: low, normal, high or urgent (default normal; above normal as the daemon's "
          "policy allows)");
ABSL_FLAG(std::string, preemptible, "",
          "submit: false keeps a more urgent job from preempting this one (as the daemon's "
          "policy allows; default true)");
ABSL_FLAG(std::string, adaptive_threads, "",
          "submit: true lets the job's thread count follow contention (faster beside other "
          "work, not bit-reproducible; default: the daemon's)");
ABSL_FLAG(std::string, winograd, "",
          "submit: false keeps float32 convolutions LibTorch's (bit-identical to PyTorch's, "
          "slower on AVX-512 CPUs); default: the daemon's (true)");
ABSL_FLAG(std::string, world_size, "",
          "submit: ranks of a data-parallel job, each a `traind worker` process (default 1)");
ABSL_FLAG(std::string, backend, "", "submit: collective backend of a distributed job: gloo or nccl");
ABSL_FLAG(std::string, launcher, "",
          "submit: what starts a distributed job's ranks: local_processes, slurm or kubernetes");
ABSL_FLAG(std::string, pretrained, "", "submit: starting weights file under the weights root");
ABSL_FLAG(std::string, from_job, "", "submit: start from this finished job's weights");
ABSL_FLAG(bool, augment_validation, false, "submit: augment validation images too");
ABSL_FLAG(std::string, request_id, "", "submit: idempotency key (default: random)");
ABSL_FLAG(bool, watch, false, "submit: follow the job after submitting");
// watch
ABSL_FLAG(int64_t, after, 0, "watch: start after this sequence number");
ABSL_FLAG(int, reconnect_seconds, 300, "watch: give up reconnecting after this long");
// list
ABSL_FLAG(std::string, state, "", "list: only jobs in these states (comma-separated)");
ABSL_FLAG(int, limit, 0, "list: at most this many jobs (0: all)");
// weights
ABSL_FLAG(std::string, o, "", "weights, plot: output file");
ABSL_FLAG(std::string, format, "pth", "weights: pth or safetensors");
ABSL_FLAG(int, trial, 0, "weights: this sweep trial's weights (default: the best trial's)");
ABSL_FLAG(int, top, 5, "classify: classes shown per image");
ABSL_FLAG(std::string, confusion, "", "report: also draw the confusion matrix into this PNG");
// demo-data
ABSL_FLAG(int, classes, 4, "demo-data: number of shape classes (2-6)");
ABSL_FLAG(int, per_class, 150, "demo-data: images per class");
