// The scheduler's decisions, one rule at a time (scheduler.h). The job
// manager's use of them, with the fake engine, is in lifecycle_test.cc.
#include "server/jobs/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace traind::jobs {
namespace {

using trainer::v1::HIGH;
using trainer::v1::LOW;
using trainer::v1::NORMAL;
using trainer::v1::URGENT;

WaitingJob W(std::string id, std::string user, trainer::v1::Priority p, int64_t order,
             int slots = 1) {
  return {std::move(id), std::move(user), p, order, slots};
}

RunningJob R(std::string id, std::string user, trainer::v1::Priority p, int slots = 1,
             int64_t started = 0, bool preemptible = true) {
  RunningJob r;
  r.id = std::move(id);
  r.user = std::move(user);
  r.priority = p;
  r.slots = slots;
  r.started = started;
  r.preemptible = preemptible;
  return r;
}

// A decision with its jobs named and its reasons in words, as users see
// them.
struct Named {
  std::vector<std::string> start;
  struct Preemption {
    std::string victim, for_job;
  };
  std::vector<Preemption> preempt;
  struct Place {
    std::string id;
    int position = 0;
    std::string reason;
  };
  std::vector<Place> waiting;
};

Named DecideNamed(const std::vector<WaitingJob>& waiting, const std::vector<RunningJob>& running,
                  int capacity, const Policy& policy) {
  const Decision d = Decide(waiting, running, capacity, policy);
  Named named;
  for (size_t i : d.start) named.start.push_back(waiting[i].id);
  for (const auto& p : d.preempt) {
    named.preempt.push_back({running[p.victim].id, waiting[p.for_job].id});
  }
  for (const auto& w : d.waiting) {
    named.waiting.push_back(
        {waiting[w.job].id, w.position, Describe(w.reason, waiting[w.job].user)});
  }
  return named;
}

std::vector<std::string> Order(const Named& d) {
  std::vector<std::string> ids = d.start;
  for (const auto& w : d.waiting) ids.push_back(w.id);
  return ids;
}

const Named::Place& PlaceOf(const Named& d, const std::string& id) {
  for (const auto& w : d.waiting) {
    if (w.id == id) return w;
  }
  static const Named::Place none;
  ADD_FAILURE() << id << " is not waiting";
  return none;
}

TEST(SchedulerTest, HigherPriorityFirstAndFifoWithinAPriority) {
  const Named d = DecideNamed({W("a", "u", LOW, 1), W("b", "u", NORMAL, 2), W("c", "u", URGENT, 3),
                               W("d", "u", NORMAL, 4), W("e", "u", HIGH, 5)},
                              {}, 1, Policy());
  EXPECT_EQ(d.start, std::vector<std::string>{"c"});
  EXPECT_EQ(Order(d), (std::vector<std::string>{"c", "e", "b", "d", "a"}));
  EXPECT_EQ(PlaceOf(d, "e").position, 1);
  EXPECT_EQ(PlaceOf(d, "a").position, 4);
  EXPECT_TRUE(d.preempt.empty());
}

TEST(SchedulerTest, FillsEveryFreeSlotAndNoMore) {
  const Named d =
      DecideNamed({W("a", "u", NORMAL, 1), W("b", "u", NORMAL, 2), W("c", "u", NORMAL, 3)},
                  {R("x", "v", NORMAL)}, 3, Policy());
  EXPECT_EQ(d.start, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(PlaceOf(d, "c").reason, "waiting: all 3 slots in use; next in line");
}

TEST(SchedulerTest, FairShareGivesTheNextSlotToTheUserWithTheLeastRunning) {
  // alice queued 4 trials first, bob 2 jobs, carol 1; alice already runs one.
  std::vector<WaitingJob> queue = {W("a1", "alice", NORMAL, 1), W("a2", "alice", NORMAL, 2),
                                   W("a3", "alice", NORMAL, 3), W("a4", "alice", NORMAL, 4),
                                   W("b1", "bob", NORMAL, 5),   W("b2", "bob", NORMAL, 6),
                                   W("c1", "carol", NORMAL, 7)};
  std::vector<RunningJob> running = {R("a0", "alice", NORMAL)};
  // Step by step: one slot frees at a time, and the job it goes to runs.
  const std::vector<std::string> expected = {"b1", "c1", "a1", "b2", "a2", "a3", "a4"};
  for (const std::string& next : expected) {
    const Named d = DecideNamed(queue, running, static_cast<int>(running.size()) + 1, Policy());
    ASSERT_EQ(d.start.size(), 1u);
    EXPECT_EQ(d.start[0], next);
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (it->id == next) {
        running.push_back(R(it->id, it->user, NORMAL));
        queue.erase(it);
        break;
      }
    }
  }
  // The whole order is visible in one decision, as positions.
  const Named all = DecideNamed({W("a1", "alice", NORMAL, 1), W("a2", "alice", NORMAL, 2),
                                 W("b1", "bob", NORMAL, 3), W("c1", "carol", NORMAL, 4)},
                                {R("a0", "alice", NORMAL)}, 1, Policy());
  EXPECT_EQ(Order(all), (std::vector<std::string>{"b1", "c1", "a1", "a2"}));
  EXPECT_EQ(PlaceOf(all, "c1").position, 2);
}

TEST(SchedulerTest, TheFairShareOrderIsTheRuleAppliedOneJobAtATime) {
  // The rule, plainly: again and again, the highest priority, then the user
  // with the fewest slots counting the jobs taken before, then the longest
  // wait. Decide merges users' queues with a heap; both must agree on a
  // mixed queue (the slots all busy with URGENT jobs: nothing starts).
  std::mt19937 rng(11);
  std::vector<WaitingJob> queue;
  const std::vector<trainer::v1::Priority> priorities = {LOW, NORMAL, NORMAL, HIGH};
  for (int i = 0; i < 300; ++i) {
    queue.push_back(W(absl::StrCat("j", i), absl::StrCat("user", rng() % 7),
                      priorities[rng() % priorities.size()], 1000 - i, rng() % 5 == 0 ? 2 : 1));
  }
  const std::vector<RunningJob> running = {R("x", "user3", URGENT, 2), R("y", "user5", URGENT)};
  std::map<std::string, int> slots = {{"user3", 2}, {"user5", 1}};
  std::vector<WaitingJob> left = queue;
  std::vector<std::string> expected;
  while (!left.empty()) {
    auto best = std::min_element(left.begin(), left.end(), [&](const auto& a, const auto& b) {
      if (a.priority != b.priority) return a.priority > b.priority;
      if (slots[a.user] != slots[b.user]) return slots[a.user] < slots[b.user];
      return a.order < b.order;
    });
    slots[best->user] += best->slots;
    expected.push_back(best->id);
    left.erase(best);
  }
  const Named d = DecideNamed(queue, running, 3, Policy());
  EXPECT_TRUE(d.start.empty());
  EXPECT_EQ(Order(d), expected);
}

TEST(SchedulerTest, PriorityBeatsFairShare) {
  const Named d = DecideNamed({W("b1", "bob", NORMAL, 1), W("a1", "alice", HIGH, 2)},
                              {R("a0", "alice", NORMAL)}, 2, Policy());
  EXPECT_EQ(d.start, std::vector<std::string>{"a1"});
}

TEST(SchedulerTest, PreemptsTheCheapestLowerPriorityJob) {
  // Two slots, both busy: a HIGH job preempts, and the victim is the LOW
  // one (not the NORMAL one); of two LOW ones, the most recently started.
  const Named d = DecideNamed(
      {W("h", "u", HIGH, 9)},
      {R("n", "u", NORMAL, 1, 1), R("l_old", "u", LOW, 1, 2), R("l_new", "u", LOW, 1, 3)}, 3,
      Policy());
  EXPECT_TRUE(d.start.empty());
  ASSERT_EQ(d.preempt.size(), 1u);
  EXPECT_EQ(d.preempt[0].victim, "l_new");
  EXPECT_EQ(d.preempt[0].for_job, "h");
  EXPECT_EQ(PlaceOf(d, "h").reason, "waiting: preempting l_new (LOW) to make room");
}

TEST(SchedulerTest, PrefersOneVictimThatFreesEnoughOverSeveral) {
  const Named d = DecideNamed(
      {W("h", "u", HIGH, 9, 2)},
      {R("l1", "u", LOW, 1, 5), R("l2", "u", LOW, 2, 1), R("l3", "u", LOW, 1, 6)}, 4, Policy());
  ASSERT_EQ(d.preempt.size(), 1u);
  EXPECT_EQ(d.preempt[0].victim, "l2");
}

TEST(SchedulerTest, TakesSeveralVictimsOnlyWhenTogetherTheyFreeEnough) {
  Named d = DecideNamed({W("h", "u", HIGH, 9, 2)},
                        {R("l1", "u", LOW, 1, 1), R("l2", "u", LOW, 1, 2)}, 2, Policy());
  ASSERT_EQ(d.preempt.size(), 2u);
  // One LOW job of one slot cannot make room for two: nothing is preempted.
  d = DecideNamed({W("h", "u", HIGH, 9, 2)}, {R("l1", "u", LOW, 1, 1), R("n", "u", HIGH, 1, 2)}, 2,
                  Policy());
  EXPECT_TRUE(d.preempt.empty());
  EXPECT_EQ(PlaceOf(d, "h").reason, "waiting: all 2 slots in use; next in line");
}

TEST(SchedulerTest, EqualPrioritiesNeverPreemptAndNonPreemptibleJobsAreSpared) {
  Named d = DecideNamed({W("n2", "u", NORMAL, 9)}, {R("n1", "u", NORMAL)}, 1, Policy());
  EXPECT_TRUE(d.preempt.empty());
  d = DecideNamed({W("u1", "u", URGENT, 9)}, {R("l", "u", LOW, 1, 0, /*preemptible=*/false)}, 1,
                  Policy());
  EXPECT_TRUE(d.preempt.empty());
}

TEST(SchedulerTest, DoesNotThrash) {
  // A preempted LOW job back in the queue does not start while the HIGH one
  // holds the slot, and a HIGH job that arrives later does not preempt the
  // running HIGH one.
  Named d =
      DecideNamed({W("l", "u", LOW, 1), W("h2", "u", HIGH, 5)}, {R("h", "u", HIGH)}, 1, Policy());
  EXPECT_TRUE(d.start.empty());
  EXPECT_TRUE(d.preempt.empty());
  // While a victim is checkpointing, the job it makes room for waits for its
  // slots and nothing else is preempted for it.
  RunningJob stopping = R("l1", "u", LOW);
  stopping.stopping = true;
  d = DecideNamed({W("h", "u", HIGH, 9)}, {stopping, R("l2", "u", LOW)}, 2, Policy());
  EXPECT_TRUE(d.preempt.empty());
  EXPECT_EQ(PlaceOf(d, "h").reason, "waiting: l1 is stopping at a checkpoint to free slots");
  // Two URGENT jobs and two LOW ones running: each preempts one.
  d = DecideNamed({W("u1", "u", URGENT, 1), W("u2", "u", URGENT, 2)},
                  {R("l1", "u", LOW, 1, 1), R("l2", "u", LOW, 1, 2)}, 2, Policy());
  ASSERT_EQ(d.preempt.size(), 2u);
  EXPECT_EQ(d.preempt[0].victim, "l2");
  EXPECT_EQ(d.preempt[1].victim, "l1");
}

TEST(SchedulerTest, NoBackfillPastAJobWaitingForCapacity) {
  // The 3-slot job waits for capacity; the 1-slot job behind it does not
  // take the free slot.
  const Named d = DecideNamed({W("big", "u", NORMAL, 1, 3), W("small", "u", NORMAL, 2)},
                              {R("x", "v", NORMAL)}, 3, Policy());
  EXPECT_TRUE(d.start.empty());
  EXPECT_EQ(PlaceOf(d, "big").reason, "waiting: takes 3 slots, 2 of 3 free; next in line");
  EXPECT_EQ(PlaceOf(d, "small").reason, "waiting: 1 job ahead in the queue");
}

TEST(SchedulerTest, QuotasHoldBackTheirUserOnly) {
  auto policy = Policy::Parse(R"({"default": {"max_running_jobs": 2},
                                  "users": {"alice": {"max_slots": 3}}})");
  ASSERT_TRUE(policy.ok()) << policy.status();
  // alice runs 3 slots: her next job waits with the reason, bob's starts.
  Named d = DecideNamed({W("a", "alice", NORMAL, 1), W("b", "bob", NORMAL, 2)},
                        {R("a0", "alice", NORMAL, 3)}, 8, *policy);
  EXPECT_EQ(d.start, std::vector<std::string>{"b"});
  EXPECT_EQ(PlaceOf(d, "a").reason, "waiting: 3 of alice's 3 running slots in use");
  // bob may run two jobs at once (the default), not three.
  d = DecideNamed({W("b3", "bob", NORMAL, 3)}, {R("b1", "bob", NORMAL), R("b2", "bob", NORMAL)}, 8,
                  *policy);
  EXPECT_TRUE(d.start.empty());
  EXPECT_EQ(PlaceOf(d, "b3").reason, "waiting: 2 of bob's 2 running jobs in use");
  // Starting counts against the quota within one decision too.
  d = DecideNamed({W("b1", "bob", NORMAL, 1), W("b2", "bob", NORMAL, 2), W("b3", "bob", NORMAL, 3)},
                  {}, 8, *policy);
  EXPECT_EQ(d.start, (std::vector<std::string>{"b1", "b2"}));
}

TEST(SchedulerTest, APriorityChangeReordersTheQueue) {
  std::vector<WaitingJob> queue = {W("a", "u", NORMAL, 1), W("b", "u", NORMAL, 2),
                                   W("c", "u", NORMAL, 3)};
  EXPECT_EQ(Order(DecideNamed(queue, {R("x", "u", NORMAL)}, 1, Policy())),
            (std::vector<std::string>{"a", "b", "c"}));
  queue[2].priority = HIGH;
  queue[0].priority = LOW;
  EXPECT_EQ(Order(DecideNamed(queue, {R("x", "u", NORMAL)}, 1, Policy())),
            (std::vector<std::string>{"c", "b", "a"}));
}

TEST(SchedulerTest, PolicyParsesAndNamesWhatIsWrong) {
  auto p = Policy::Parse(R"({"default": {"max_queued_jobs": 5, "max_priority": "HIGH"},
                             "users": {"ops": {"max_priority": "URGENT",
                                               "may_opt_out_of_preemption": true}}})");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->For("anyone").max_queued_jobs, 5);
  EXPECT_EQ(p->For("anyone").max_priority, HIGH);
  EXPECT_FALSE(p->For("anyone").may_opt_out_of_preemption);
  EXPECT_EQ(p->For("ops").max_queued_jobs, 5);  // the default's, not overridden
  EXPECT_EQ(p->For("ops").max_priority, URGENT);
  EXPECT_TRUE(p->For("ops").may_opt_out_of_preemption);
  EXPECT_EQ(Policy().For("x").max_priority, NORMAL);

  auto bad = Policy::Parse(R"({"users": {"bob": {"max_slots": "many"}}})");
  EXPECT_EQ(bad.status().message(),
            "users.bob.max_slots: must be an integer in [-1, 1000000] (-1: no limit)");
  bad = Policy::Parse(R"({"default": {"max_priority": "SUPER"}})");
  EXPECT_EQ(bad.status().message(),
            "default.max_priority: must be one of LOW, NORMAL, HIGH, URGENT");
  bad = Policy::Parse(R"({"default": {"max_slot": 3}})");
  EXPECT_TRUE(absl::StrContains(bad.status().message(), "default.max_slot: unknown"));
  EXPECT_EQ(Policy::Parse("{").status().message(), "policy: not valid JSON");
}

TEST(SchedulerTest, PrioritiesMapOntoTheClustersOwnMechanisms) {
  auto p = Policy::Parse(R"({"clusters": {"slurm_qos": {"HIGH": "high"},
                                          "slurm_nice": {"LOW": 1000},
                                          "kubernetes_priority_class": {"URGENT": "urgent"}}})");
  ASSERT_TRUE(p.ok()) << p.status();
  trainer::v1::Distributed slurm;
  slurm.set_launcher(trainer::v1::SLURM);
  trainer::v1::Distributed high = slurm, low = slurm, mine = slurm;
  p->MapPriority(HIGH, &high);
  EXPECT_EQ(high.slurm().qos(), "high");
  EXPECT_FALSE(high.slurm().has_nice());
  p->MapPriority(LOW, &low);
  EXPECT_EQ(low.slurm().nice(), 1000);
  EXPECT_EQ(low.slurm().qos(), "");
  mine.mutable_slurm()->set_qos("debug");  // the spec's own choice stays
  p->MapPriority(HIGH, &mine);
  EXPECT_EQ(mine.slurm().qos(), "debug");
  trainer::v1::Distributed kube;
  kube.set_launcher(trainer::v1::KUBERNETES);
  p->MapPriority(URGENT, &kube);
  EXPECT_EQ(kube.kubernetes().priority_class(), "urgent");
  trainer::v1::Distributed local;
  p->MapPriority(HIGH, &local);
  EXPECT_FALSE(local.has_slurm());
  EXPECT_EQ(Policy::Parse(R"({"clusters": {"slurm_nice": {"LOW": "x"}}})").status().message(),
            "clusters.slurm_nice.LOW: must be an integer in [-10000, 10000]");
  EXPECT_EQ(Policy::Parse(R"({"clusters": {"slurm_qos": {"SOON": "x"}}})").status().message(),
            "clusters.slurm_qos.SOON: not a priority (LOW, NORMAL, HIGH, URGENT)");
}

TEST(SchedulerTest, SlotsFollowTheRanksThisMachineRuns) {
  trainer::v1::JobSpec spec;
  EXPECT_EQ(JobSlots(spec, 4), 1);
  spec.mutable_distributed()->set_world_size(3);
  EXPECT_EQ(JobSlots(spec, 4), 3);
  EXPECT_EQ(JobSlots(spec, 2), 2);  // larger than the daemon: all of it
  spec.mutable_distributed()->set_launcher(trainer::v1::SLURM);
  EXPECT_EQ(JobSlots(spec, 4), 1);  // the cluster places its ranks
  EXPECT_EQ(EffectivePriority(spec), NORMAL);
}

}  // namespace
}  // namespace traind::jobs
