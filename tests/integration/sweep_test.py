"""Sweeps through the real traind and trainctl on a small real subset."""
import hashlib
import json
import os
import shutil
import signal
import time
import unittest

from harness import Daemon, make_subset, temp_root, of_kind

COMMON = {"dataset": "subset", "image_size": 32, "batch_size": 8, "loader_threads": 1}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def settings(trial):
    return {s["name"]: s.get("value", 0.0) for s in trial["settings"]}


class SweepTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-sweep-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"))
        cls.d = Daemon(os.path.join(cls.root, "state"), cls.data,
                       os.path.join(cls.root, "w")).start()
        # Sweeps fine-tune from this job's weights.
        cls.base = cls.d.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                                "--image_size=32", "--batch_size=8")
        cls.d.watch(cls.base)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def submit_file(self, spec, name):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            json.dump(dict(COMMON, from_job=self.base, **spec), f)
        return self.d.submit("-f", path)

    def test_default_grid_costs_ten_epochs_and_matches_separate_runs(self):
        sweep = self.submit_file({"kind": "SWEEP"}, "grid.json")
        events, p = self.d.watch(sweep)
        self.assertEqual(p.returncode, 0, p.stderr)
        job = self.d.status(sweep)
        trials = job["trials"]
        self.assertEqual(len(trials), 6)
        losses = [t["final"]["validation_loss"] for t in trials]
        self.assertEqual(losses, sorted(losses))  # ranked, best first
        self.assertEqual(sorted(t["trial"] for t in trials), [1, 2, 3, 4, 5, 6])
        self.assertEqual(len(of_kind(events, "epoch")), 10)  # not 1+3+5+1+3+5 = 18
        self.assertEqual(job["sweep_summary"]["epochs_requested"], 18)
        self.assertEqual(job["sweep_summary"]["epochs_trained"], 10)
        table = self.d.trainctl("status", sweep).stdout
        self.assertIn("10 epochs trained for trials asking 18 in all (44% saved)", table)
        self.assertEqual(sum(1 for l in table.splitlines() if "shares trial" in l), 4)
        # Progress counts trials, whatever the spec's own epochs say.
        self.assertEqual((job["sweep_summary"]["trial_count"],
                          job["sweep_summary"]["trials_finished"]), (6, 6))
        self.assertIn("progress   6/6 trials", table)
        row = next(l for l in self.d.trainctl("list").stdout.splitlines() if l.startswith(sweep))
        self.assertIn("6/6 trials", row)

        # Trial 1 (1 epoch, lr 1e-3) is epoch 1 of trial 3's run; it equals a
        # separately submitted 1-epoch fine-tune with the same settings.
        one = next(t for t in trials if t["trial"] == 1)
        self.assertEqual(settings(one)["epochs"], 1)
        self.assertEqual(one["run"], 3)
        alone = self.submit_file({"kind": "FINETUNE", "epochs": 1, "learning_rate": 1e-3,
                                  "backbone_learning_rate": 1e-4}, "alone.json")
        self.d.watch(alone)
        ref = self.d.status(alone)["latest"]
        for key in ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy"):
            self.assertAlmostEqual(one["final"][key], ref[key], places=12, msg=key)
        trial_file = os.path.join(self.root, "trial1.pth")
        alone_file = os.path.join(self.root, "alone.pth")
        self.d.trainctl("weights", sweep, "--trial=1", "-o", trial_file)
        self.d.trainctl("weights", alone, "-o", alone_file)
        self.assertEqual(sha256(trial_file), sha256(alone_file))
        # Without --trial: the best trial's weights.
        best_file = os.path.join(self.root, "best.pth")
        best_trial_file = os.path.join(self.root, "best-trial.pth")
        self.d.trainctl("weights", sweep, "-o", best_file)
        self.d.trainctl("weights", sweep, f"--trial={trials[0]['trial']}", "-o", best_trial_file)
        self.assertEqual(sha256(best_file), sha256(best_trial_file))
        # Every trial's weights open with the safe loader, strictly into torchvision.
        import torch
        import torchvision
        for t in trials:
            path = os.path.join(self.root, f"trial-{t['trial']}.pth")
            self.d.trainctl("weights", sweep, f"--trial={t['trial']}", "-o", path)
            state = torch.load(path, weights_only=True)
            torchvision.models.resnet18(num_classes=state["fc.bias"].numel()).load_state_dict(
                state, strict=True)
        p = self.d.trainctl("weights", sweep, "--trial=9", "-o", best_file, check=False)
        self.assertEqual(p.returncode, 2)
        self.assertIn("no finished trial 9", p.stderr)

    def test_random_search_draws_the_same_trials_for_the_same_seed(self):
        space = {"search": "RANDOM", "random_trials": 3, "random_seed": 7, "epochs": [1],
                 "parameters": [{"name": "learning_rate", "min": 1e-4, "max": 1e-2, "log": True},
                                {"name": "hue", "min": 0.0, "max": 0.2}]}
        drawn = []
        for name in ("a.json", "b.json"):
            job = self.submit_file({"kind": "SWEEP", "image_size": 32, "sweep": space}, name)
            events, p = self.d.watch(job)
            self.assertEqual(p.returncode, 0, p.stderr)
            drawn.append(sorted((t["trial"], sorted(settings(t).items()))
                                for t in of_kind(events, "trial_started")))
        self.assertEqual(len(drawn[0]), 3)
        self.assertEqual(drawn[0], drawn[1])
        lrs = [dict(s)["learning_rate"] for _, s in drawn[0]]
        self.assertTrue(all(1e-4 <= lr <= 1e-2 for lr in lrs), lrs)
        self.assertEqual(len(set(lrs)), 3)

    def test_asha_stops_the_runs_its_rule_says(self):
        space = {"epochs": [3], "learning_rates": [1e-3, 3e-2, 1e-4, 1e-1],
                 "asha": {"rungs": [1], "reduction_factor": 2}}
        job = self.submit_file({"kind": "SWEEP", "sweep": space}, "asha.json")
        events, p = self.d.watch(job)
        self.assertEqual(p.returncode, 0, p.stderr)
        # Recompute the rule from each run's epoch-1 validation loss, in order.
        seen, expect_stopped = [], set()
        for e in of_kind(events, "epoch"):
            if e["epoch"] != 1:
                continue
            loss = e["validation_loss"]
            if seen:
                s = sorted(seen)
                pos = (len(s) - 1) / 2
                lo = int(pos)
                cutoff = s[lo] + (pos - lo) * (s[min(lo + 1, len(s) - 1)] - s[lo])
                if loss > cutoff:
                    expect_stopped.add(e["trial"])
            seen.append(loss)
        trials = {t["trial"]: t for t in self.d.status(job)["trials"]}
        stopped = {n for n, t in trials.items() if t.get("stopped")}
        self.assertEqual(stopped, expect_stopped)
        self.assertTrue(stopped, "the crafted learning rates should stop at least one run")
        for n in stopped:
            self.assertEqual(trials[n]["epochs_run"], 1)
            self.assertIn("ASHA: stopped at rung epoch 1", trials[n]["stopped"])
        for n in set(trials) - stopped:
            self.assertEqual(trials[n]["epochs_run"], 3)
        self.assertEqual(len(of_kind(events, "epoch")), 4 + 2 * (4 - len(stopped)))
        self.assertEqual(self.d.status(job)["sweep_summary"].get("trials_stopped", 0),
                         len(stopped))

    def test_parallel_runs_give_the_same_trials(self):
        results = []
        for parallel in (1, 2):
            space = {"epochs": [1, 2], "learning_rates": [1e-3, 2e-3], "parallel_runs": parallel}
            # One thread per run either way, so the numbers can match exactly.
            job = self.submit_file({"kind": "SWEEP", "image_size": 32, "threads": 1,
                                    "sweep": space}, f"par{parallel}.json")
            events, p = self.d.watch(job)
            self.assertEqual(p.returncode, 0, p.stderr)
            seqs = [int(e["seq"]) for e in events]
            self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
            results.append({t["trial"]: t["final"]["validation_loss"]
                            for t in self.d.status(job)["trials"]})
        self.assertEqual(sorted(results[0]), [1, 2, 3, 4])
        self.assertEqual(sorted(results[1]), [1, 2, 3, 4])
        # Concurrent runs share nothing that changes their numbers.
        self.assertEqual(results[0], results[1])

    def test_cancelling_a_sweep_leaves_no_trial_running(self):
        # 64 px: slow enough that the cancel lands while trials remain.
        sweep = self.submit_file({"kind": "SWEEP", "image_size": 64}, "cancel.json")
        deadline = time.time() + 120
        while self.d.status(sweep)["state"] != "RUNNING":
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        self.d.trainctl("cancel", sweep)
        events, p = self.d.watch(sweep)
        self.assertEqual(p.returncode, 4)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "CANCELLED")
        running = self.d.trainctl_json("list", "--state=running,cancelling")[0].get("jobs", [])
        self.assertEqual(running, [])
        finished = self.d.status(sweep).get("trials", [])
        self.assertLess(len(finished), 6)


class SweepRestartTest(unittest.TestCase):
    def test_finished_trials_stay_finished_after_a_kill(self):
        root = temp_root("traind-sweep-restart-")
        try:
            data = os.path.join(root, "data")
            os.makedirs(os.path.join(root, "w"))
            make_subset(os.path.join(data, "subset"))
            args = (os.path.join(root, "state"), data, os.path.join(root, "w"))
            d = Daemon(*args).start()
            base = d.submit("--kind=scratch", "--dataset=subset", "--epochs=1",
                            "--image_size=32", "--batch_size=8")
            d.watch(base)
            job = d.submit("--kind=sweep", "--dataset=subset", f"--from_job={base}",
                           "--image_size=32", "--batch_size=8")
            deadline = time.time() + 300
            while len(d.status(job).get("trials", [])) < 2:  # trials 1 and 2 of run 3
                self.assertLess(time.time(), deadline)
                time.sleep(0.05)
            before = {t["trial"]: t for t in d.status(job)["trials"]}
            d.stop(sig=signal.SIGKILL)
            d = Daemon(*args, listen=d.address).start()
            events, p = d.watch(job)
            self.assertEqual(p.returncode, 0, p.stderr)
            finished = [r["result"]["trial"] for r in of_kind(events, "trial_finished")]
            self.assertEqual(sorted(finished), [1, 2, 3, 4, 5, 6])  # each exactly once
            after = {t["trial"]: t for t in d.status(job)["trials"]}
            for n, t in before.items():
                self.assertEqual(after[n]["final"], t["final"])
            d.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
