"""Distributed jobs on Kubernetes (launcher KUBERNETES), as far as a machine
without a Kubernetes API server allows: the real traind talks HTTPS to a
stand-in API server (kube_standin.py) that also runs the Job's pods as local
processes; every object traind sends and every object the stand-in serves
is validated against the official Kubernetes schemas (tests/k8s, the
kubernetes-models packages), and so is deploy/k8s. No real cluster ran this."""
import hashlib
import json
import os
import shutil
import subprocess
import time
import unittest

from harness import (TRAIND, Daemon, assert_resumed_in_a_new_cluster_job, make_subset, of_kind,
                     read_until_paused, temp_root)
from kube_standin import StandIn

HERE = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.join(HERE, "../k8s")
DEPLOY = os.path.join(HERE, "../../deploy")
IMAGE = "64"
BATCH = "8"
SEED = 7


def restricted_violations(pod):
    """What a pod spec breaks of Kubernetes' "restricted" Pod Security
    Standard (kubernetes.io/docs/concepts/security/pod-security-standards),
    plus a read-only root filesystem; [] when it meets it."""
    out = []
    pod_sc = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"{key} is set")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= allowed_volumes:
            out.append(f"volume {v['name']} is of kind {kinds - allowed_volumes}")
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext", {})
        name = c["name"]
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{name}: runs as user 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile is {seccomp}, not RuntimeDefault")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: root filesystem is writable")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append(f"{name}: uses a hostPort")
    return out


def validate(*files):
    """Runs the schema validator; returns its output (fails the test if it refuses)."""
    if not os.path.isdir(os.path.join(K8S, "node_modules")):
        raise AssertionError("tests/k8s/node_modules is missing: scripts/install-deps.sh --test "
                             "installs the Kubernetes schemas (npm install)")
    p = subprocess.run(["node", "validate.mjs", *files], cwd=K8S, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(p.stdout + p.stderr)
    return p.stdout


class KubernetesTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-kube-")
        certs = os.path.join(cls.root, "certs")
        subprocess.run([os.path.join(DEPLOY, "make-certs.sh"), certs], check=True,
                       capture_output=True)
        cls.token = "standin-token-" + os.urandom(8).hex()
        token_file = os.path.join(cls.root, "token")
        with open(token_file, "w") as f:
            f.write(cls.token + "\n")
        cls.standin = StandIn(f"{certs}/server.crt", f"{certs}/server.key", cls.token,
                              os.path.abspath(TRAIND)).start()
        cls.standin.unpullable.add("registry.example/missing:1")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "weights"))
        make_subset(os.path.join(cls.data, "subset"), per_class=13)
        cls.daemon = Daemon(os.path.join(cls.root, "state"), cls.data,
                            os.path.join(cls.root, "weights"),
                            extra=[f"--kube-api=https://127.0.0.1:{cls.standin.port}",
                                   f"--kube-token-file={token_file}",
                                   f"--kube-ca-file={certs}/ca.crt", "--kube-namespace=traind",
                                   "--kube-image=registry.example/traind:test",
                                   "--kube-data-claim=datasets"]).start()

    @classmethod
    def tearDownClass(cls):
        cls.daemon.stop()
        cls.standin.stop()
        try:
            objects = os.path.join(cls.root, "objects.json")
            with open(objects, "w") as f:
                json.dump(cls.standin.received + cls.standin.served, f)
            cls.validated = validate(objects)
        finally:
            shutil.rmtree(cls.root, ignore_errors=True)

    def submit(self, *extra, epochs=2, launcher="kubernetes"):
        return self.daemon.submit("--kind=scratch", "--dataset=subset", f"--epochs={epochs}",
                                  f"--image_size={IMAGE}", f"--batch_size={BATCH}",
                                  f"--seed={SEED}", "--world_size=2", f"--launcher={launcher}",
                                  *extra)

    def sha(self, job):
        out = os.path.join(self.root, f"{job}.pth")
        self.daemon.trainctl("weights", job, "-o", out)
        with open(out, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    def wait_for_no_objects(self):
        deadline = time.time() + 20
        while time.time() < deadline and self.standin.objects:
            time.sleep(0.2)
        self.assertEqual(self.standin.objects, {})

    def test_job_trains_on_pods_and_its_objects_are_deleted(self):
        spec = os.path.join(self.root, "pods.json")
        with open(spec, "w") as f:
            json.dump({"distributed": {"kubernetes": {
                "cpu": "1", "memory": "2Gi", "node_selector": {"pool": "train"},
                "priority_class": "batch", "queue": "team-a",
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "train",
                                 "effect": "NoSchedule"}]}}}, f)
        job = self.submit("-f", spec)
        events, _ = self.daemon.watch(job)
        logs = [l["text"] for l in of_kind(events, "log")]
        self.assertEqual(of_kind(events, "state")[-1]["state"], "SUCCEEDED", logs)
        self.assertTrue(any(t.startswith("Kubernetes Job ") and " runs: " in t for t in logs), logs)
        self.wait_for_no_objects()
        sent = {o["kind"]: o for o in self.standin.received if job in o["metadata"]["name"]}
        self.assertEqual(sorted(sent), ["Job", "Secret", "Service"])
        spec = sent["Job"]["spec"]
        self.assertEqual((spec["completions"], spec["parallelism"], spec["completionMode"],
                          spec["backoffLimit"]), (2, 2, "Indexed", 0))
        pod = spec["template"]["spec"]
        self.assertEqual(pod["subdomain"], sent["Service"]["metadata"]["name"])
        self.assertEqual(sent["Service"]["spec"]["clusterIP"], "None")
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        self.assertIn("secretKeyRef", env["TRAIND_ATTEMPT_SECRET"]["valueFrom"])  # not in the Job
        self.assertEqual(env["MASTER_ADDR"]["value"],
                         f"{sent['Job']['metadata']['name']}-0.{sent['Service']['metadata']['name']}")
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["data"]["persistentVolumeClaim"]["claimName"], "datasets")
        self.assertEqual(restricted_violations(pod), [])
        container = pod["containers"][0]
        self.assertEqual(container["resources"]["limits"], {"cpu": "1", "memory": "2Gi"})
        self.assertEqual(pod["nodeSelector"], {"pool": "train"})
        self.assertEqual(pod["tolerations"][0]["key"], "dedicated")
        self.assertEqual(pod["priorityClassName"], "batch")
        self.assertEqual(sent["Job"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"], "team-a")
        placement = self.daemon.trainctl_json("status", job)[0]["placement"]
        self.assertEqual((placement["launcher"], placement["scheduler_job"]),
                         ("KUBERNETES", sent["Job"]["metadata"]["name"]))
        local = self.submit(launcher="local_processes")
        self.daemon.watch(local)
        self.assertEqual(self.sha(job), self.sha(local))

    def test_cancel_deletes_the_job(self):
        job = self.submit(epochs=200)
        watcher, events = self.daemon.watch_until(job, lambda e: "batch" in e)
        self.daemon.trainctl("cancel", job)
        events = self.daemon.finish_watch(watcher, events)
        self.assertEqual(of_kind(events, "state")[-1]["state"], "CANCELLED")
        self.wait_for_no_objects()

    def test_pause_deletes_the_job_and_resume_finishes_exactly(self):
        reference = self.submit(epochs=3, launcher="local_processes")
        self.daemon.watch(reference)
        job = self.submit(epochs=3)
        watcher, events = self.daemon.watch_until(job, lambda e: "batch" in e)
        self.daemon.trainctl("pause", job)
        read_until_paused(self, watcher, events)
        # Its slot went back: the Kubernetes Job, its Service and Secret are gone.
        self.wait_for_no_objects()
        self.daemon.trainctl("resume", job)
        events = self.daemon.finish_watch(watcher, events)
        assert_resumed_in_a_new_cluster_job(self, events, "Kubernetes Job ", " runs: ")
        self.wait_for_no_objects()
        self.assertEqual(self.sha(job), self.sha(reference))

    def test_a_job_deleted_outside_traind_is_cancelled_with_that_reason(self):
        job = self.submit(epochs=200)
        deadline = time.time() + 60
        while time.time() < deadline and not any(k == "Job" for k, _ in self.standin.objects):
            time.sleep(0.2)
        name = next(n for k, n in self.standin.objects if k == "Job")
        self.standin.handle("DELETE", "traind", "jobs", name, None, None)
        events, _ = self.daemon.watch(job)
        last = of_kind(events, "state")[-1]
        self.assertEqual(last["state"], "CANCELLED")
        self.assertIn(f"Kubernetes Job {name} was deleted outside traind", last["reason"])
        self.wait_for_no_objects()

    def test_an_image_that_cannot_be_pulled_fails_the_job_naming_it(self):
        spec = os.path.join(self.root, "missing-image.json")
        with open(spec, "w") as f:
            json.dump({"distributed": {"kubernetes": {"image": "registry.example/missing:1"}}}, f)
        job = self.submit("-f", spec)
        events, _ = self.daemon.watch(job)
        last = of_kind(events, "state")[-1]
        self.assertEqual(last["state"], "FAILED")
        self.assertIn("cannot pull its image (ErrImagePull", last["reason"])
        self.wait_for_no_objects()

    def test_deploy_manifests_are_valid(self):
        out = validate(*[os.path.join(DEPLOY, "k8s", f) for f in sorted(os.listdir(
            os.path.join(DEPLOY, "k8s"))) if f.endswith(".yaml")])
        for kind in ("StatefulSet", "Service", "Role", "RoleBinding", "NetworkPolicy"):
            self.assertIn(kind, out)

    def test_the_kustomization_renders_valid_objects(self):
        rendered = subprocess.run(["kubectl", "kustomize", os.path.join(DEPLOY, "k8s")],
                                  check=True, capture_output=True, text=True).stdout
        path = os.path.join(self.root, "rendered.yaml")
        with open(path, "w") as f:
            f.write(rendered)
        out = validate(path)
        self.assertEqual(out.count("\nok ") + out.startswith("ok "), 7, out)
        # The daemon's pod meets the "restricted" Pod Security Standard, its
        # image is pinned, and it has time to checkpoint when stopped.
        import yaml
        objects = [o for o in yaml.safe_load_all(rendered) if o]
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        self.assertEqual(restricted_violations(pod), [])
        for c in pod["containers"]:
            self.assertNotRegex(c["image"], r"(:latest|^[^:]*)$", "pin the image by version")
            grace = [a for a in c["args"] if a.startswith("--grace-seconds=")]
            self.assertEqual(len(grace), 1, c["args"])
            # Shutdown waits --grace-seconds, then jobs checkpoint at their
            # next batch boundary: a minute more at least.
            self.assertGreaterEqual(pod["terminationGracePeriodSeconds"],
                                    int(grace[0].split("=")[1]) + 60)
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        self.assertLessEqual({"/var/lib/traind", "/tmp"}, mounts)
        # The checker itself refuses what the profile forbids.
        self.assertGreaterEqual(len(restricted_violations(
            {"containers": [{"name": "x", "image": "x:1"}], "hostNetwork": True})), 4)

    def test_validator_refuses_a_malformed_object(self):
        bad = os.path.join(self.root, "bad.json")
        with open(bad, "w") as f:
            json.dump([{"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
                        "spec": {"completions": "two", "template": {"spec": {"containers": []}}}}], f)
        with self.assertRaises(AssertionError):
            validate(bad)


if __name__ == "__main__":
    unittest.main()
