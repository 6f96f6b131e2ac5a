"""The HTTP front end (traind --http-listen) against the real traind: the
JSON API field for field equal to gRPC's messages, the same validation
errors, Server-Sent Events resuming with Last-Event-ID, ranged weights
downloads, tokens, the session cookie and the loopback rule."""
import hashlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import unittest
import urllib.parse

from harness import (TRAIND, Daemon, add_token, make_certs, make_subset, start_with_users,
                     temp_root)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../client/python"))
from google.protobuf import json_format  # noqa: E402
from traind_client import Client, TraindError, pb  # noqa: E402

SMALL = {"kind": "SCRATCH", "dataset": "subset", "epochs": 2, "imageSize": 32, "batchSize": 8}


class Http:
    """Requests to one traind's HTTP port as one user (token or cookie)."""

    def __init__(self, url, token=None, ca=None):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.tls = u.hostname, u.port, u.scheme == "https"
        self.ca = ca
        self.token = token
        self.cookie = None

    def connect(self, timeout=60):
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca)
            return http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=timeout)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def open(self, method, path, body=None, headers=None):
        """The response, unread (streams)."""
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        if self.cookie:
            h["Cookie"] = self.cookie
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        conn = self.connect()
        conn.request(method, path, body=body, headers=h)
        return conn.getresponse()

    def call(self, method, path, body=None, headers=None):
        """(status, headers, body bytes)."""
        r = self.open(method, path, body, headers)
        try:
            return r.status, r.headers, r.read()
        finally:
            r.close()

    def json(self, method, path, body=None, headers=None):
        status, headers, data = self.call(method, path, body, headers)
        return status, json.loads(data) if data else None


def read_sse(response, stop_after=None):
    """Events of a text/event-stream response as (id, event type, data),
    until the stream ends or `stop_after` messages were read."""
    out, fields = [], {}
    while True:
        line = response.readline()
        if not line:
            return out
        line = line.decode().rstrip("\r\n")
        if line == "":
            if "data" in fields:
                out.append((fields.get("id"), fields.get("event", "message"), fields["data"]))
                if stop_after and sum(1 for e in out if e[1] == "message") >= stop_after:
                    return out
            fields = {}
        elif not line.startswith(":") and ":" in line:
            k, v = line.split(":", 1)
            fields[k] = v[1:] if v.startswith(" ") else v


class HttpApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_with_users(cls, "traind-http-", {"alice": "", "bob": "", "root": "admin"},
                         ["--http-listen=127.0.0.1:0"])
        cls.web = {u: Http(cls.d.http_url, t) for u, t in cls.tokens.items()}
        cls.rpc = {u: Client(cls.d.address, token=t) for u, t in cls.tokens.items()}
        status, body = cls.web["alice"].json("POST", "/v1/jobs", SMALL)
        assert status == 200, body
        cls.job = body["jobId"]
        cls.rpc["alice"].job(cls.job).wait(timeout=600)

    @classmethod
    def tearDownClass(cls):
        for c in cls.rpc.values():
            c.close()
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_job_json_is_grpcs_message_field_for_field(self):
        status, body = self.web["alice"].json("GET", f"/v1/jobs/{self.job}")
        self.assertEqual(status, 200, body)
        via_http = json_format.ParseDict(body, pb.GetJobResponse())  # unknown fields would fail
        via_grpc = self.rpc["alice"].job(self.job).get()
        self.assertEqual(via_http.job, via_grpc)
        self.assertEqual(via_http.job.state, pb.SUCCEEDED)
        self.assertEqual(body["job"]["state"], "SUCCEEDED")  # enums by name
        status, body = self.web["alice"].json("GET", "/v1/jobs?view=FULL&state=SUCCEEDED")
        page = json_format.ParseDict(body, pb.ListJobsResponse())
        self.assertEqual(list(page.jobs), self.rpc["alice"].list_jobs(states=["SUCCEEDED"], full=True))
        # Paging: one job a page, following next_page_token, gives every job once.
        everyone, token = [], ""
        while True:
            _, body = self.web["root"].json("GET", f"/v1/jobs?page_size=1&page_token={token}")
            self.assertLessEqual(len(body["jobs"]), 1)
            everyone += [j["id"] for j in body["jobs"]]
            token = body["nextPageToken"]
            if not token:
                break
        self.assertEqual(everyone, [j.id for j in self.rpc["root"].list_jobs()])
        self.assertEqual(self.web["root"].call("GET", "/v1/jobs?page_size=x")[0], 400)

    def test_bad_specs_are_named_as_over_grpc(self):
        bad = [dict(SMALL, epochs=0), dict(SMALL, batchSize=0), dict(SMALL, dataset="../outside"),
               dict(SMALL, dataset="no-such-dataset"), dict(SMALL, imageSize=100000),
               {"kind": "FINETUNE", "dataset": "subset"},
               dict(SMALL, distributed={"worldSize": 0}), dict(SMALL, learningRate=-1)]
        for spec in bad:
            with self.subTest(spec=spec):
                status, body = self.web["alice"].json("POST", "/v1/jobs", spec)
                with self.assertRaises(TraindError) as grpc_error:
                    self.rpc["alice"].submit(spec)
                self.assertEqual(body["error"]["status"], grpc_error.exception.code)
                self.assertEqual(body["error"]["message"], grpc_error.exception.message)
                self.assertIn(status, (400,))
                # Errors do not show the server's folders.
                self.assertNotIn(self.root, body["error"]["message"])
        status, body = self.web["alice"].json("POST", "/v1/jobs", dict(SMALL, dataset="nope"))
        self.assertEqual(body["error"]["message"], 'dataset: "nope" does not exist in the data root')
        status, body = self.web["alice"].json("POST", "/v1/jobs", dict(SMALL, noSuchField=1))
        self.assertEqual((status, body["error"]["status"]), (400, "INVALID_ARGUMENT"))
        self.assertIn("noSuchField", body["error"]["message"])
        status, body = self.web["alice"].json("POST", "/v1/jobs", "{not json")
        self.assertEqual((status, body["error"]["status"]), (400, "INVALID_ARGUMENT"))
        status, body = self.web["alice"].json("GET", "/v1/jobs?state=SLEEPING")
        self.assertEqual(status, 400)
        self.assertIn("state", body["error"]["message"])
        status, body = self.web["alice"].json("GET", "/v1/jobs/job-999999")
        self.assertEqual((status, body["error"]["status"]), (404, "NOT_FOUND"))
        status, body = self.web["alice"].json("POST", "/v1/jobs", "x" * (2 << 20))
        self.assertEqual((status, body["error"]["status"]), (429, "RESOURCE_EXHAUSTED"))

    def test_events_resume_with_last_event_id_without_gap_or_repeat(self):
        status, body = self.web["alice"].json("POST", "/v1/jobs", dict(SMALL, epochs=4))
        job = body["jobId"]
        r = self.web["alice"].open("GET", f"/v1/jobs/{job}/events")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["Content-Type"].startswith("text/event-stream"))
        first = read_sse(r, stop_after=5)
        r.close()  # the browser lost its connection
        last_id = [e[0] for e in first if e[1] == "message"][-1]
        r = self.web["alice"].open("GET", f"/v1/jobs/{job}/events", headers={"Last-Event-ID": last_id})
        rest = read_sse(r)
        messages = [e for e in first + rest if e[1] == "message"]
        seqs = [int(e[0]) for e in messages]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(rest[-1][1], "end")  # so EventSource stops instead of reconnecting
        events = [json_format.Parse(e[2], pb.JobEvent()) for e in messages]
        self.assertEqual(events, list(self.rpc["alice"].job(job).watch()))
        self.assertEqual(pb.JobState.Name(events[-1].state.state), "SUCCEEDED")
        # after_seq in the query works the same; a bad Last-Event-ID is named.
        tail = read_sse(self.web["alice"].open("GET", f"/v1/jobs/{job}/events?after_seq={seqs[-2]}"))
        self.assertEqual([int(e[0]) for e in tail if e[1] == "message"], [seqs[-1]])
        status, body = self.web["alice"].json("GET", f"/v1/jobs/{job}/events",
                                              headers={"Last-Event-ID": "x"})
        self.assertEqual(status, 400)
        self.assertIn("Last-Event-ID", body["error"]["message"])

    def test_ranged_download_equals_the_whole_files_digest(self):
        w = self.web["alice"]
        for fmt in ("pth", "safetensors"):
            status, headers, whole = w.call("GET", f"/v1/jobs/{self.job}/weights?format={fmt}")
            self.assertEqual(status, 200)
            sha = hashlib.sha256(whole).hexdigest()
            self.assertEqual(headers["X-Traind-Sha256"], sha)
            self.assertEqual(headers["ETag"], f'"{sha}"')
            if fmt == "pth":
                self.assertEqual(sha, self.rpc["alice"].job(self.job).get().weights_sha256)
            n = len(whole)
            parts = []
            for first, last in ((0, 999), (1000, n // 2), (n // 2 + 1, None)):
                rng = f"bytes={first}-{'' if last is None else last}"
                status, headers, part = w.call("GET", f"/v1/jobs/{self.job}/weights?format={fmt}",
                                               headers={"Range": rng})
                self.assertEqual(status, 206, rng)
                end = n - 1 if last is None else last
                self.assertEqual(headers["Content-Range"], f"bytes {first}-{end}/{n}")
                parts.append(part)
            self.assertEqual(hashlib.sha256(b"".join(parts)).hexdigest(), sha)
        status, headers, body = w.call("GET", f"/v1/jobs/{self.job}/weights",
                                       headers={"Range": "bytes=999999999-"})
        self.assertEqual(status, 416)
        self.assertEqual(json.loads(body)["error"]["status"], "OUT_OF_RANGE")
        # A range of an older file (If-Range with another ETag) gets the whole file.
        status, _, body = w.call("GET", f"/v1/jobs/{self.job}/weights",
                                 headers={"Range": "bytes=0-9", "If-Range": '"0000"'})
        self.assertEqual((status, len(body) > 10), (200, True))
        status, body = w.json("GET", f"/v1/jobs/{self.job}/weights?format=onnx")
        self.assertEqual(status, 400)
        self.assertIn("format", body["error"]["message"])
        status, body = w.json("GET", f"/v1/jobs/{self.job}/weights?trial=4294967297")
        self.assertEqual(status, 400)  # not wrapped to trial 1
        self.assertIn("trial: not an integer", body["error"]["message"])

    def test_users_see_only_their_jobs_and_admins_all(self):
        status, body = self.web["bob"].json("GET", f"/v1/jobs/{self.job}")
        self.assertEqual((status, body["error"]["status"]), (404, "NOT_FOUND"))
        for path in (f"/v1/jobs/{self.job}/events", f"/v1/jobs/{self.job}/weights",
                     f"/v1/jobs/{self.job}/report"):
            self.assertEqual(self.web["bob"].call("GET", path)[0], 404, path)
        self.assertEqual(self.web["bob"].call("POST", f"/v1/jobs/{self.job}:cancel")[0], 404)
        _, body = self.web["bob"].json("GET", "/v1/jobs")
        self.assertNotIn(self.job, [j["id"] for j in body["jobs"]])
        _, body = self.web["root"].json("GET", "/v1/jobs")
        self.assertIn(self.job, [j["id"] for j in body["jobs"]])
        anonymous = Http(self.d.http_url)
        status, headers, body = anonymous.call("GET", "/v1/jobs")
        self.assertEqual(status, 401)
        self.assertEqual(headers["WWW-Authenticate"], "Bearer")
        self.assertEqual(json.loads(body)["error"]["status"], "UNAUTHENTICATED")
        self.assertEqual(Http(self.d.http_url, "not-a-token").call("GET", "/v1/jobs")[0], 401)
        self.assertEqual(anonymous.call("GET", "/healthz")[0], 200)
        self.assertEqual(anonymous.call("GET", "/")[0], 200)  # the page asks for a token

    def test_session_cookie_logs_in_and_refuses_cross_site_writes(self):
        login = Http(self.d.http_url, self.tokens["alice"])
        status, headers, body = login.call("POST", "/v1/login")
        self.assertEqual(status, 200, body)
        cookie = headers["Set-Cookie"]
        for attr in ("HttpOnly", "SameSite=Strict", "Path=/"):
            self.assertIn(attr, cookie)
        browser = Http(self.d.http_url)
        browser.cookie = cookie.split(";")[0]
        self.assertEqual(browser.json("GET", "/v1/whoami")[1]["user"], "alice")
        status, body = browser.json("GET", f"/v1/jobs/{self.job}")
        self.assertEqual(status, 200)
        status, body = browser.json("POST", "/v1/jobs", SMALL,
                                    headers={"Origin": "https://evil.example"})
        self.assertEqual((status, body["error"]["status"]), (403, "PERMISSION_DENIED"))
        status, body = browser.json("POST", "/v1/jobs", dict(SMALL, epochs=0),
                                    headers={"Origin": self.d.http_url})
        self.assertEqual(status, 400)  # same origin: it got as far as validation
        self.assertEqual(Http(self.d.http_url, "wrong").call("POST", "/v1/login")[0], 401)
        # The scheme's case does not matter, for logging in as for every call.
        lower = Http(self.d.http_url).call("POST", "/v1/login",
                                           headers={"Authorization": f"bearer {self.tokens['bob']}"})
        self.assertEqual(lower[0], 200)
        self.assertEqual(json.loads(lower[2])["user"], "bob")

    def test_pause_resume_and_priority(self):
        w = self.web["alice"]
        _, body = w.json("POST", "/v1/jobs", dict(SMALL, epochs=300, priority="LOW"))
        job = body["jobId"]
        status, body = w.json("POST", f"/v1/jobs/{job}:setPriority", {"priority": "NORMAL"})
        self.assertEqual(status, 200, body)
        self.assertEqual(body["job"]["spec"]["priority"], "NORMAL")
        status, body = w.json("POST", f"/v1/jobs/{job}:setPriority", {"priority": "URGENT"})
        self.assertEqual((status, body["error"]["status"]), (403, "PERMISSION_DENIED"))
        self.assertIn("may give jobs at most NORMAL", body["error"]["message"])
        status, body = w.json("POST", f"/v1/jobs/{job}:setPriority", {"priority": "SOON"})
        self.assertEqual((status, body["error"]["status"]), (400, "INVALID_ARGUMENT"))
        status, body = w.json("POST", f"/v1/jobs/{job}:pause")
        self.assertEqual(status, 200, body)
        # The stream shows PAUSED (at once when it was queued, at its next
        # batch boundary when it ran).
        response = w.open("GET", f"/v1/jobs/{job}/events")
        seen = []
        while "PAUSED" not in seen:
            line = response.readline()
            self.assertTrue(line, "the stream ended before PAUSED")
            line = line.decode() if isinstance(line, bytes) else line
            if line.startswith("data: ") and '"state"' in line:
                seen.append(json.loads(line[6:])["state"]["state"])
        response.close()
        status, body = w.json("POST", f"/v1/jobs/{job}:resume")
        self.assertEqual(status, 200, body)
        self.assertIn(body["job"]["state"], ("QUEUED", "RUNNING"))
        status, body = w.json("POST", f"/v1/jobs/{job}:resume")
        self.assertEqual((status, body["error"]["status"]), (400, "FAILED_PRECONDITION"))
        self.assertEqual(self.web["bob"].call("POST", f"/v1/jobs/{job}:pause")[0], 404)
        w.json("POST", f"/v1/jobs/{job}:cancel")

    def test_cancel_report_classify_and_delete(self):
        w = self.web["alice"]
        _, body = w.json("POST", "/v1/jobs", dict(SMALL, epochs=300))
        job = body["jobId"]
        status, body = w.json("GET", f"/v1/jobs/{job}/report")
        self.assertEqual((status, body["error"]["status"]), (400, "FAILED_PRECONDITION"))
        status, body = w.json("POST", f"/v1/jobs/{job}:cancel")
        self.assertEqual(status, 200)
        self.assertIn(body["job"]["state"], ("CANCELLING", "CANCELLED"))
        events = read_sse(w.open("GET", f"/v1/jobs/{job}/events"))
        states = [json.loads(e[2])["state"]["state"] for e in events
                  if e[1] == "message" and "state" in json.loads(e[2])]
        self.assertEqual(states[-1], "CANCELLED")
        status, body = w.json("DELETE", f"/v1/jobs/{job}")
        self.assertEqual(status, 200)
        self.assertGreaterEqual(int(body["freedBytes"]), 0)
        self.assertEqual(w.call("GET", f"/v1/jobs/{job}")[0], 404)

        status, body = w.json("GET", f"/v1/jobs/{self.job}/report")
        ev = json_format.ParseDict(body, pb.Evaluation())
        self.assertEqual(ev, self.rpc["alice"].job(self.job).get().evaluation)
        self.assertEqual(len(ev.confusion), len(ev.classes) ** 2)
        images = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(self.data, "subset"))
                        for f in fs)[:2]
        boundary = "traindboundary"
        parts = []
        for i, path in enumerate(images):
            with open(path, "rb") as f:
                parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image{i}\"; "
                             f"filename=\"{os.path.basename(path)}\"\r\nContent-Type: image/jpeg\r\n\r\n"
                             .encode() + f.read() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        status, _, data = w.call("POST", f"/v1/jobs/{self.job}:classify?top_k=3", body,
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        self.assertEqual(status, 200, data)
        got = json_format.Parse(data, pb.ClassifyResponse())
        want = self.rpc["alice"].job(self.job).classify(images, top_k=3)
        self.assertEqual([[(p.class_name, round(p.probability, 4)) for p in r.predictions]
                          for r in got.results],
                         [[(n, round(p, 4)) for n, p in r] for r in want])
        status, _, data = w.call("POST", f"/v1/jobs/{self.job}:classify", b"{}",
                                 {"Content-Type": "application/json"})
        self.assertEqual(status, 400)


class HttpLimitsTest(unittest.TestCase):
    def test_event_streams_cannot_take_every_serving_thread(self):
        root = temp_root("traind-http-limits-")
        make_subset(os.path.join(root, "data", "subset"))
        # 6 threads: streams may hold 2, the rest keep serving.
        d = Daemon(os.path.join(root, "state"), os.path.join(root, "data"), root,
                   extra=["--http-listen=127.0.0.1:0", "--http-threads=6"]).start()
        streams = []
        try:
            web = Http(d.http_url)
            job = web.json("POST", "/v1/jobs", dict(SMALL, epochs=500))[1]["jobId"]
            for _ in range(2):
                streams.append(web.open("GET", f"/v1/jobs/{job}/events"))
                self.assertEqual(streams[-1].status, 200)
                read_sse(streams[-1], stop_after=1)
            status, body = web.json("GET", f"/v1/jobs/{job}/events")
            self.assertEqual((status, body["error"]["status"]), (429, "RESOURCE_EXHAUSTED"))
            self.assertIn("event streams open", body["error"]["message"])
            self.assertEqual(web.call("GET", "/v1/jobs")[0], 200)  # the API still answers
            self.assertEqual(web.call("GET", "/")[0], 200)
            streams.pop().close()  # a stream ends: its place is free again
            deadline = time.time() + 30
            while True:
                again = web.open("GET", f"/v1/jobs/{job}/events")
                if again.status == 200 or time.time() > deadline:
                    break
                again.read()
                time.sleep(0.5)  # the server notices the closed stream at its next write
            self.assertEqual(again.status, 200)
            streams.append(again)
            web.call("POST", f"/v1/jobs/{job}:cancel")
        finally:
            for r in streams:
                r.close()
            d.stop()
            shutil.rmtree(root, ignore_errors=True)


class HttpHostTest(unittest.TestCase):
    """The DNS-rebinding guard: a loopback daemon without tokens (the demo's
    setup) answers only requests whose Host names it."""

    ROUTES = [("GET", "/healthz"), ("GET", "/v1/whoami"), ("POST", "/v1/login"),
              ("POST", "/v1/logout"), ("GET", "/v1/jobs"), ("POST", "/v1/jobs"),
              ("GET", "/v1/jobs/job-000999"), ("DELETE", "/v1/jobs/job-000999"),
              ("POST", "/v1/jobs/job-000999:cancel"), ("POST", "/v1/jobs/job-000999:classify"),
              ("POST", "/v1/jobs/job-000999:pause"), ("POST", "/v1/jobs/job-000999:resume"),
              ("POST", "/v1/jobs/job-000999:setPriority"),
              ("GET", "/v1/jobs/job-000999/events"), ("GET", "/v1/jobs/job-000999/weights"),
              ("GET", "/v1/jobs/job-000999/report"), ("GET", "/"), ("GET", "/static/app.js"),
              ("GET", "/no/such/route")]

    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-http-host-")
        os.makedirs(os.path.join(cls.root, "data"))
        cls.port_file = os.path.join(cls.root, "http-port")
        cls.d = Daemon(os.path.join(cls.root, "state"), os.path.join(cls.root, "data"), cls.root,
                       extra=["--http-listen=127.0.0.1:0", f"--http-port-file={cls.port_file}",
                              "--http-allowed-hosts=traind.test,*.lab.test"]).start()
        cls.web = Http(cls.d.http_url)

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_http_port_file_holds_the_bound_port(self):
        with open(self.port_file) as f:
            self.assertEqual(int(f.read()), self.web.port)

    def test_a_rebound_name_is_refused_on_every_route(self):
        p = self.web.port
        spec = dict(SMALL, dataset="sub", epochs=1)
        for method, path in self.ROUTES:
            for host in (f"rebind.example:{p}", "rebind.example", f"localhost.rebind.example:{p}"):
                headers = {"Host": host, "Origin": f"http://{host}"}
                status, _, body = self.web.call(method, path, spec if method == "POST" else None,
                                                headers)
                self.assertEqual(status, 421, (method, path, host, body))
                error = json.loads(body)["error"]
                self.assertIn(f'Host "{host}" is not a name this daemon serves', error["message"])
                self.assertIn("--http-allowed-hosts", error["message"])
        # Nothing was stored.
        status, body = self.web.json("GET", "/v1/jobs")
        self.assertEqual((status, body.get("jobs", [])), (200, []))

    def test_the_daemons_own_names_pass(self):
        p = self.web.port
        for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"LocalHost:{p}", f"traind.test:{p}",
                     f"a.lab.test:{p}"):
            status, _, body = self.web.call("GET", "/v1/jobs/job-000999", headers={"Host": host})
            self.assertEqual(status, 404, (host, body))
            status, _, body = self.web.call("POST", "/v1/jobs", dict(SMALL, epochs=0),
                                            {"Host": host, "Origin": f"http://{host}"})
            self.assertEqual(status, 400, (host, body))  # through to validation
        status, _, _ = self.web.call("GET", "/healthz", headers={"Host": f"lab.test:{p}"})
        self.assertEqual(status, 421)

    def test_http_port_file_needs_http_listen(self):
        p = subprocess.run([TRAIND, "--listen=127.0.0.1:0", f"--state-dir={self.root}/other",
                            f"--http-port-file={self.root}/x"], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertIn("--http-port-file needs --http-listen", p.stderr)


class HttpExposureTest(unittest.TestCase):
    def test_a_network_address_needs_tls_and_tokens(self):
        root = temp_root("traind-http-exposed-")
        try:
            p = subprocess.run([TRAIND, "--listen=127.0.0.1:0", "--http-listen=0.0.0.0:0",
                                f"--state-dir={root}/state"], capture_output=True, text=True,
                               timeout=60)
            self.assertEqual(p.returncode, 1)
            self.assertIn("refusing to serve 0.0.0.0:0 without TLS", p.stderr)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def test_https_with_the_daemons_certificate(self):
        root = temp_root("traind-http-tls-")
        certs = os.path.join(root, "certs")
        make_certs(certs)
        tokens_file = os.path.join(root, "tokens")
        token = add_token(tokens_file, "carol")
        os.makedirs(os.path.join(root, "data"))
        d = Daemon(os.path.join(root, "state"), os.path.join(root, "data"), root,
                   extra=[f"--tls-cert={certs}/server.crt", f"--tls-key={certs}/server.key",
                          f"--tokens-file={tokens_file}", "--http-listen=127.0.0.1:0"]).start()
        try:
            self.assertTrue(d.http_url.startswith("https://"), d.http_url)
            web = Http(d.http_url, token, ca=f"{certs}/ca.crt")
            self.assertEqual(web.json("GET", "/v1/whoami"), (200, {"user": "carol", "admin": False,
                                                                  "tokens": True}))
            status, headers, _ = web.call("POST", "/v1/login")
            self.assertIn("Secure", headers["Set-Cookie"])
            plain = Http(d.http_url.replace("https://", "http://"), token)
            with self.assertRaises((http.client.HTTPException, ConnectionError, OSError)):
                status, _, _ = plain.call("GET", "/v1/jobs")
                if status == 400:  # a TLS server may answer plaintext with an error
                    raise ConnectionError("refused")
        finally:
            d.stop()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
