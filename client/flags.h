// trainctl's flags, defined once in flags.cc and read by the commands.
#ifndef TRAIND_CLIENT_FLAGS_H_
#define TRAIND_CLIENT_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, server);
ABSL_DECLARE_FLAG(std::string, output);
ABSL_DECLARE_FLAG(std::string, token);
ABSL_DECLARE_FLAG(std::string, tls_ca);
ABSL_DECLARE_FLAG(std::string, tls_cert);
ABSL_DECLARE_FLAG(std::string, tls_key);
ABSL_DECLARE_FLAG(std::string, f);
ABSL_DECLARE_FLAG(std::string, kind);
ABSL_DECLARE_FLAG(std::string, dataset);
ABSL_DECLARE_FLAG(std::string, epochs);
ABSL_DECLARE_FLAG(std::string, batch_size);
ABSL_DECLARE_FLAG(std::string, image_size);
ABSL_DECLARE_FLAG(std::string, lr);
ABSL_DECLARE_FLAG(std::string, backbone_lr);
ABSL_DECLARE_FLAG(std::string, train_fraction);
ABSL_DECLARE_FLAG(std::string, seed);
ABSL_DECLARE_FLAG(std::string, trainable);
ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(std::string, threads);
ABSL_DECLARE_FLAG(std::string, loader_threads);
ABSL_DECLARE_FLAG(std::string, precision);
ABSL_DECLARE_FLAG(std::string, priority);
ABSL_DECLARE_FLAG(std::string, preemptible);
ABSL_DECLARE_FLAG(std::string, adaptive_threads);
ABSL_DECLARE_FLAG(std::string, winograd);
ABSL_DECLARE_FLAG(std::string, world_size);
ABSL_DECLARE_FLAG(std::string, backend);
ABSL_DECLARE_FLAG(std::string, launcher);
ABSL_DECLARE_FLAG(std::string, pretrained);
ABSL_DECLARE_FLAG(std::string, from_job);
ABSL_DECLARE_FLAG(bool, augment_validation);
ABSL_DECLARE_FLAG(std::string, request_id);
ABSL_DECLARE_FLAG(bool, watch);
ABSL_DECLARE_FLAG(int64_t, after);
ABSL_DECLARE_FLAG(int, reconnect_seconds);
ABSL_DECLARE_FLAG(std::string, state);
ABSL_DECLARE_FLAG(int, limit);
ABSL_DECLARE_FLAG(std::string, o);
ABSL_DECLARE_FLAG(std::string, format);
ABSL_DECLARE_FLAG(int, trial);
ABSL_DECLARE_FLAG(int, top);
ABSL_DECLARE_FLAG(std::string, confusion);
ABSL_DECLARE_FLAG(int, classes);
ABSL_DECLARE_FLAG(int, per_class);

#endif  // TRAIND_CLIENT_FLAGS_H_
