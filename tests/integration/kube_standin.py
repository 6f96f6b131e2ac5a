"""A stand-in for a Kubernetes API server, for tests: HTTPS, a bearer token,
and the few calls traind's KUBERNETES launcher makes (create a Secret, a
Service and a Job; read a Job and its pods; delete them). It plays the
kubelet too: a Job's pods run as local processes (the image's traind is this
build's; MASTER_ADDR, which a cluster's DNS would resolve, is 127.0.0.1; the
pod IP is 127.0.0.1). Every object it receives and serves is kept, so the
test can validate them all against Kubernetes' schemas. No real cluster."""
import copy
import json
import os
import re
import signal
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COLLECTION = re.compile(r"^/(api/v1|apis/batch/v1)/namespaces/([^/]+)/(secrets|services|jobs|pods)"
                        r"(?:/([^/?]+))?(?:\?(.*))?$")


class StandIn:
    def __init__(self, cert, key, token, traind, worker_command="/usr/local/bin/traind"):
        self.token, self.traind, self.worker_command = token, traind, worker_command
        self.objects = {}        # (kind, name) -> object
        self.pods = {}           # job name -> [(pod name, index, Popen or None)]
        self.received, self.served = [], []
        self.unpullable = set()  # images that "cannot be pulled"
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code, obj):
                body = json.dumps(obj).encode()
                with standin.lock:
                    standin.served.append(obj)
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def route(self, method):
                if self.headers.get("Authorization") != f"Bearer {standin.token}":
                    return self.reply(401, standin.status(401, "Unauthorized", "bad token"))
                m = COLLECTION.match(self.path)
                if not m:
                    return self.reply(404, standin.status(404, "NotFound", self.path))
                _, ns, resource, name, query = m.groups()
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                code, obj = standin.handle(method, ns, resource, name, query, body)
                self.reply(code, obj)

            def do_GET(self):
                self.route("GET")

            def do_POST(self):
                self.route("POST")

            def do_DELETE(self):
                self.route("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        with self.lock:
            for pods in self.pods.values():
                for _, _, proc in pods:
                    if proc and proc.poll() is None:
                        proc.kill()
                        proc.wait()
        self.server.shutdown()

    @staticmethod
    def status(code, reason, message):
        return {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "reason": reason, "message": message, "code": code}

    def handle(self, method, ns, resource, name, query, body):
        kind = {"secrets": "Secret", "services": "Service", "jobs": "Job", "pods": "Pod"}[resource]
        with self.lock:
            if method == "POST":
                self.received.append(copy.deepcopy(body))
                obj = copy.deepcopy(body)
                meta = obj.setdefault("metadata", {})
                meta.update(namespace=ns, uid=str(uuid.uuid4()), resourceVersion="1",
                            creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                if (kind, meta["name"]) in self.objects:
                    return 409, self.status(409, "AlreadyExists", meta["name"])
                self.objects[(kind, meta["name"])] = obj
                if kind == "Job":
                    self.run_pods(obj)
                return 201, self.view(kind, meta["name"])
            if method == "DELETE":
                if (kind, name) not in self.objects:
                    return 404, self.status(404, "NotFound", name)
                del self.objects[(kind, name)]
                for _, _, proc in self.pods.pop(name, []) if kind == "Job" else []:
                    if proc and proc.poll() is None:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                return 200, {"apiVersion": "v1", "kind": "Status", "metadata": {},
                             "status": "Success"}
            if kind == "Pod":
                selector = dict(p.split("%3D", 1) for p in (query or "").replace(
                    "labelSelector=", "").split(",") if "%3D" in p)
                items = [self.pod_view(job, pod, index, proc)
                         for job, pods in self.pods.items() for pod, index, proc in pods
                         if all(self.objects.get(("Job", job), {}).get("spec", {}).get(
                             "template", {}).get("metadata", {}).get("labels", {}).get(k) == v
                             for k, v in selector.items())]
                return 200, {"apiVersion": "v1", "kind": "PodList",
                             "metadata": {"resourceVersion": "1"}, "items": items}
            if (kind, name) not in self.objects:
                return 404, self.status(404, "NotFound", name)
            return 200, self.view(kind, name)

    def run_pods(self, job):
        name = job["metadata"]["name"]
        container = job["spec"]["template"]["spec"]["containers"][0]
        secrets = {n: o.get("stringData", {}) for (k, n), o in self.objects.items() if k == "Secret"}
        pods = []
        for index in range(job["spec"]["completions"]):
            pod = f"{name}-{index}-{uuid.uuid4().hex[:5]}"
            if container["image"] in self.unpullable:
                pods.append((pod, index, None))
                continue
            env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIND_", "RANK"))}
            for e in container.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
                elif "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    env[e["name"]] = secrets[ref["name"]][ref["key"]]
                elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP":
                    env[e["name"]] = "127.0.0.1"
            env["MASTER_ADDR"] = "127.0.0.1"  # the stand-in's "cluster DNS"
            env["JOB_COMPLETION_INDEX"] = str(index)
            command = list(container["command"])
            assert command[0] == self.worker_command, command
            command[0] = self.traind
            pods.append((pod, index, subprocess.Popen(command, env=env)))
        self.pods[name] = pods

    def pod_view(self, job, pod, index, proc):
        template = self.objects[("Job", job)]["spec"]["template"]
        container = template["spec"]["containers"][0]
        status = {"phase": "Running", "podIP": "127.0.0.1"}
        if proc is None:
            status = {"phase": "Pending", "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "",
                "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImagePull",
                                      "message": f"pull access denied for {container['image']}"}}}]}
        elif proc.poll() is not None:
            status = {"phase": "Succeeded" if proc.returncode == 0 else "Failed", "podIP": "127.0.0.1"}
        labels = dict(template["metadata"]["labels"], **{
            "batch.kubernetes.io/job-completion-index": str(index)})
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "default", "labels": labels},
                "spec": dict(copy.deepcopy(template["spec"]), nodeName="standin-node"),
                "status": status}

    def view(self, kind, name):
        obj = copy.deepcopy(self.objects[(kind, name)])
        if kind == "Job":
            procs = [p for _, _, p in self.pods.get(name, [])]
            ended = [p for p in procs if p is not None and p.poll() is not None]
            failed = sum(1 for p in ended if p.returncode != 0)
            succeeded = len(ended) - failed
            status = {"active": len(procs) - len(ended), "succeeded": succeeded, "failed": failed}
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if failed:
                status["conditions"] = [{"type": "Failed", "status": "True",
                                         "reason": "BackoffLimitExceeded",
                                         "message": "Job has reached the specified backoff limit",
                                         "lastProbeTime": now, "lastTransitionTime": now}]
            elif procs and succeeded == len(procs):
                status["conditions"] = [{"type": "Complete", "status": "True",
                                         "lastProbeTime": now, "lastTransitionTime": now}]
            obj["status"] = status
        return obj

    def pids(self, job_prefix=""):
        with self.lock:
            return {index: p.pid for job, pods in self.pods.items() if job.startswith(job_prefix)
                    for _, index, p in pods if p is not None and p.poll() is None}
