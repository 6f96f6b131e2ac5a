#include "server/jobs/store.h"

#include <filesystem>

#include <gtest/gtest.h>
#include <sqlite3.h>

namespace traind::jobs {
namespace {

std::string FreshDb(const std::string& name) {
  const auto dir = std::filesystem::path(testing::TempDir()) / "store_test";
  std::filesystem::create_directories(dir);
  const auto path = dir / name;
  std::filesystem::remove(path);
  std::filesystem::remove(path.string() + "-wal");
  std::filesystem::remove(path.string() + "-shm");
  return path.string();
}

StoredJob MakeJob(int64_t index, const std::string& request_id) {
  StoredJob j;
  j.index = index;
  j.request_id = request_id;
  j.job.set_id("job-" + std::to_string(index));
  j.job.set_state(trainer::v1::QUEUED);
  j.job.mutable_spec()->set_dataset("d");
  return j;
}

TEST(StoreTest, JobsAndEventsSurviveReopen) {
  const std::string path = FreshDb("reopen.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ(*(*store)->NextIndex(), 1);
    ASSERT_TRUE((*store)->InsertJob(MakeJob(1, "req-a")).ok());
    ASSERT_TRUE((*store)->InsertJob(MakeJob(2, "")).ok());
    EXPECT_EQ(*(*store)->NextIndex(), 3);
    trainer::v1::Job updated = MakeJob(2, "").job;
    updated.set_state(trainer::v1::SUCCEEDED);
    ASSERT_TRUE((*store)->UpdateJob(updated).ok());
    for (int seq = 1; seq <= 5; ++seq) {
      trainer::v1::JobEvent e;
      e.set_seq(seq);
      e.mutable_batch()->set_loss(seq * 0.5);
      ASSERT_TRUE((*store)->AppendEvent("job-1", e).ok());
    }
  }
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto jobs = (*store)->LoadJobs();
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), 2u);
  EXPECT_EQ((*jobs)[0].request_id, "req-a");
  EXPECT_EQ((*jobs)[1].job.state(), trainer::v1::SUCCEEDED);
  EXPECT_EQ(*(*store)->LastSeq("job-1"), 5);
  EXPECT_EQ(*(*store)->LastSeq("job-2"), 0);
  auto events = (*store)->ReadEvents("job-1", 2, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[0].seq(), 3);
  EXPECT_DOUBLE_EQ((*events)[2].batch().loss(), 2.5);
  EXPECT_EQ((*store)->ReadEvents("job-1", 0, 2)->size(), 2u);
}

TEST(StoreTest, CheckpointsAreListedNewestFirstAndDeletedWithTheirJob) {
  const std::string path = FreshDb("checkpoints.db");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status();
  Store& s = **store;
  ASSERT_TRUE(s.InsertJob(MakeJob(1, "r1")).ok());
  ASSERT_TRUE(s.InsertJob(MakeJob(2, "r2")).ok());
  auto checkpoint = [](const std::string& job, int epoch, int batch, int64_t step) {
    CheckpointRecord c;
    c.job_id = job;
    c.epoch = epoch;
    c.next_batch = batch;
    c.global_step = step;
    c.path = job + "/epoch-" + std::to_string(epoch) + "-" + std::to_string(batch);
    c.sha256 = std::string(64, 'a');
    c.size = 10;
    c.attempt = 1;
    return c;
  };
  ASSERT_TRUE(s.InsertCheckpoint(checkpoint("job-1", 2, 0, 10)).ok());
  ASSERT_TRUE(s.InsertCheckpoint(checkpoint("job-1", 3, 4, 24)).ok());
  ASSERT_TRUE(s.InsertCheckpoint(checkpoint("job-1", 3, 0, 20)).ok());
  ASSERT_TRUE(s.InsertCheckpoint(checkpoint("job-2", 2, 0, 10)).ok());
  trainer::v1::JobEvent e;
  e.set_seq(1);
  ASSERT_TRUE(s.AppendEvent("job-1", e).ok());
  ASSERT_TRUE(s.AppendEvent("job-2", e).ok());

  auto listed = s.ListCheckpoints("job-1");
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 3u);
  EXPECT_EQ((*listed)[0].global_step, 24);
  EXPECT_EQ((*listed)[0].next_batch, 4);
  EXPECT_EQ((*listed)[2].global_step, 10);
  ASSERT_TRUE(s.DeleteCheckpoint("job-1", (*listed)[2].path).ok());
  EXPECT_EQ(s.ListCheckpoints("job-1")->size(), 2u);

  ASSERT_TRUE(s.DeleteJob("job-1").ok());
  EXPECT_TRUE(s.ListCheckpoints("job-1")->empty());
  EXPECT_TRUE(s.ReadEvents("job-1", 0, 10)->empty());
  auto jobs = s.LoadJobs();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].job.id(), "job-2");
  EXPECT_EQ(s.ListCheckpoints("job-2")->size(), 1u);
  EXPECT_EQ(s.ReadEvents("job-2", 0, 10)->size(), 1u);
  EXPECT_TRUE(s.IntegrityCheck().ok());
}

TEST(StoreTest, DuplicateSequenceNumberIsRefused) {
  auto store = Store::Open(FreshDb("dup.db"));
  ASSERT_TRUE(store.ok());
  trainer::v1::JobEvent e;
  e.set_seq(1);
  ASSERT_TRUE((*store)->AppendEvent("job-1", e).ok());
  EXPECT_FALSE((*store)->AppendEvent("job-1", e).ok());
  ASSERT_TRUE((*store)->InsertJob(MakeJob(1, "r")).ok());
  EXPECT_FALSE((*store)->InsertJob(MakeJob(1, "other")).ok());  // same index and id
  EXPECT_FALSE((*store)->InsertJob(MakeJob(2, "r")).ok());      // same request id
}

TEST(StoreTest, NewerSchemaIsRefusedWithAClearError) {
  const std::string path = FreshDb("future.db");
  ASSERT_TRUE(Store::Open(path).ok());
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "PRAGMA user_version=99;", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("newer"), std::string::npos);
}

TEST(StoreTest, GarbageFileIsAnError) {
  const std::string path = FreshDb("garbage.db");
  FILE* f = fopen(path.c_str(), "wb");
  fputs("this is not a database, just text that is long enough to be read as a header....", f);
  fclose(f);
  EXPECT_FALSE(Store::Open(path).ok());
}

}  // namespace
}  // namespace traind::jobs
