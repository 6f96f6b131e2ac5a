// The control link's codec: train:: structs to and from ranks.proto's
// messages. EncodeRunConfig/DecodeRunConfig are the one path a job's
// configuration takes to its ranks: every TrainConfig field is carried
// (a field added to TrainConfig and not here fails to compile; one dropped
// on either side fails rank_codec_test).
#ifndef TRAIND_SERVER_LAUNCH_RANK_CODEC_H_
#define TRAIND_SERVER_LAUNCH_RANK_CODEC_H_

#include "server/launch/attempts.h"
#include "server/train/config.h"
#include "traind/internal/v1/ranks.pb.h"

namespace traind::launch {

namespace pb = ::traind::internal::v1;

pb::RunConfig EncodeRunConfig(const train::TrainConfig& c);
// Paths are the control plane's: the rank fetches the starting weights and
// the checkpoint they name, and writes its own outputs.
train::TrainConfig DecodeRunConfig(const pb::RunConfig& p);

pb::Progress EncodeProgress(const RankMessage& m);
// False for a message with no known kind.
bool DecodeProgress(const pb::Progress& p, RankMessage* m);

}  // namespace traind::launch

#endif  // TRAIND_SERVER_LAUNCH_RANK_CODEC_H_
