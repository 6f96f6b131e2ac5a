// train:: structs to and from the control link's messages (ranks.proto).
#ifndef TRAIND_SERVER_DIST_WIRE_H_
#define TRAIND_SERVER_DIST_WIRE_H_

#include "server/dist/attempts.h"
#include "server/train/config.h"
#include "traind/internal/v1/ranks.pb.h"

namespace traind::dist {

namespace pb = ::traind::internal::v1;

pb::RunConfig ToProto(const train::TrainConfig& c);
// Paths (starting weights, resume, outputs, checkpoints) are left empty: the
// worker names its own local files.
train::TrainConfig FromProto(const pb::RunConfig& p);

pb::Progress ToProto(const RankMessage& m);
// False for a message with no known kind.
bool FromProto(const pb::Progress& p, RankMessage* m);

}  // namespace traind::dist

#endif  // TRAIND_SERVER_DIST_WIRE_H_
