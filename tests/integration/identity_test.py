"""Identity is decided per call: several users' calls interleaved on ONE
connection are each served as themselves, for every RPC, over TLS and over
plaintext loopback, in a fixed order and in a seeded random one. And the
standard health service answers without a token."""
import glob
import os
import random
import shutil
import time
import unittest

import grpc

from harness import Daemon, add_token, make_certs, make_subset, temp_root
from rpc_client import Client, pb

OK, NOT_FOUND, UNAUTH = grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, \
    grpc.StatusCode.UNAUTHENTICATED
USERS = ("alice", "bob", "root")  # root is an admin
TERMINAL = (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)


class IdentityBase:
    tls = False

    @classmethod
    def setUpClass(cls):
        cls.root = temp_root("traind-identity-")
        cls.data = os.path.join(cls.root, "data")
        os.makedirs(os.path.join(cls.root, "w"))
        make_subset(os.path.join(cls.data, "subset"), per_class=4)
        tokens_file = os.path.join(cls.root, "tokens")
        cls.tokens = {"alice": add_token(tokens_file, "alice"),
                      "bob": add_token(tokens_file, "bob"),
                      "root": add_token(tokens_file, "root", "admin")}
        extra = [f"--tokens-file={tokens_file}", "--max-streams-per-user=64"]
        if cls.tls:
            certs = os.path.join(cls.root, "certs")
            make_certs(certs)
            extra += [f"--tls-cert={certs}/server.crt", f"--tls-key={certs}/server.key"]
        cls.d = Daemon(os.path.join(cls.root, "state"), cls.data, os.path.join(cls.root, "w"),
                       extra=extra).start()
        if cls.tls:
            with open(f"{certs}/ca.crt", "rb") as f:
                creds = grpc.ssl_channel_credentials(root_certificates=f.read())
            cls.channel = grpc.secure_channel(cls.d.address, creds)
        else:
            cls.channel = grpc.insecure_channel(cls.d.address)
        cls.c = Client(cls.channel)
        cls.owner = {}  # job id -> user
        # One finished job per non-admin user, submitted on the shared channel.
        cls.done = {u: cls.submit(u) for u in ("alice", "bob")}
        for job in cls.done.values():
            cls.wait_terminal(job)
        cls.image = open(sorted(glob.glob(os.path.join(cls.data, "subset", "*", "*")))[0],
                         "rb").read()

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.d.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def submit(cls, user):
        spec = pb.JobSpec(kind=pb.SCRATCH, dataset="subset", epochs=1, image_size=32,
                          batch_size=4)
        code, r, why = cls.c.call("SubmitJob", pb.SubmitJobRequest(spec=spec),
                                  cls.tokens[user])
        assert code == OK, why
        cls.owner[r.job_id] = user
        return r.job_id

    @classmethod
    def wait_terminal(cls, job):
        deadline = time.time() + 300
        while time.time() < deadline:
            code, r, why = cls.c.call("GetJob", pb.GetJobRequest(job_id=job), cls.tokens["root"])
            assert code == OK, why
            if r.job.state in TERMINAL:
                return r.job
            time.sleep(0.1)
        raise AssertionError(f"{job} did not finish")

    def may_see(self, user, job):
        return user == "root" or self.owner[job] == user

    def check(self, user, rpc, job):
        """One call as `user`; asserts the outcome that user alone should get."""
        tok = self.tokens.get(user)
        expected = OK if self.may_see(user, job) else NOT_FOUND
        where = f"{rpc} {job} as {user}"
        if rpc == "GetJob":
            code, r, why = self.c.call("GetJob", pb.GetJobRequest(job_id=job), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
            if code == OK:
                self.assertEqual(r.job.owner, self.owner[job], where)
        elif rpc == "ListJobs":
            code, r, why = self.c.call("ListJobs", pb.ListJobsRequest(page_size=1000), tok)
            self.assertEqual(code, OK, f"{where}: {why}")
            want = {j for j, u in self.owner.items() if self.may_see(user, j)}
            self.assertEqual({j.id for j in r.jobs}, want, where)
        elif rpc == "StreamMetrics":
            code, events, why = self.c.call("StreamMetrics",
                                            pb.StreamMetricsRequest(job_id=job), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
            if code == OK:
                self.assertEqual([e.event.seq for e in events],
                                 list(range(1, len(events) + 1)), where)
        elif rpc == "GetWeights":
            # The header and the last bytes only: the whole file is 45 MB.
            code, r, why = self.c.call("GetJob", pb.GetJobRequest(job_id=job),
                                       self.tokens["root"])
            size = r.job.weights_size
            code, msgs, why = self.c.call(
                "GetWeights", pb.GetWeightsRequest(job_id=job, offset=size - 16), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
            if code == OK:
                self.assertEqual(msgs[0].header.sha256, r.job.weights_sha256, where)
        elif rpc == "Classify":
            code, r, why = self.c.call("Classify",
                                       pb.ClassifyRequest(job_id=job, images=[self.image]), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
        elif rpc == "CancelJob":
            code, r, why = self.c.call("CancelJob", pb.CancelJobRequest(job_id=job), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
        elif rpc == "DeleteJob":
            code, r, why = self.c.call("DeleteJob", pb.DeleteJobRequest(job_id=job), tok)
            self.assertEqual(code, expected, f"{where}: {why}")
            if code == OK:
                del self.owner[job]
        elif rpc == "SubmitJob":
            new = self.submit(user)
            code, r, why = self.c.call("GetJob", pb.GetJobRequest(job_id=new), tok)
            self.assertEqual((code, r.job.owner), (OK, user), f"{where}: {why}")
            # Cancelled at once by its owner, so the queue stays short.
            code, r, why = self.c.call("CancelJob", pb.CancelJobRequest(job_id=new), tok)
            self.assertEqual(code, OK, why)
        else:
            raise AssertionError(rpc)

    def test_every_rpc_interleaved_on_one_connection(self):
        # Each RPC is called by every user in turn, starting with a different
        # one each time, on one channel: bob first, then alice, then the admin,
        # then bob again...
        reads = ("GetJob", "StreamMetrics", "GetWeights", "Classify", "CancelJob")
        for i, rpc in enumerate(reads + ("ListJobs", "SubmitJob")):
            order = USERS[i % 3:] + USERS[:i % 3]
            for user in order + order[::-1]:
                for job in self.done.values():
                    self.check(user, rpc, job)
        # Deleting: the other user cannot, the owner can, on the same channel.
        victim = self.submit("alice")
        self.c.call("CancelJob", pb.CancelJobRequest(job_id=victim), self.tokens["alice"])
        self.wait_terminal(victim)
        self.check("bob", "DeleteJob", victim)
        self.check("alice", "GetJob", victim)
        self.check("alice", "DeleteJob", victim)
        # Tokenless and bad-token calls between good ones stay refused.
        for tok in (None, "0" * 64, self.tokens["bob"] + "x"):
            code, _, why = self.c.call("GetJob", pb.GetJobRequest(job_id=self.done["bob"]), tok)
            self.assertEqual(code, UNAUTH, why)
            self.assertIn("bearer token", why)
            self.check("bob", "GetJob", self.done["bob"])

    def test_random_interleaving(self):
        rng = random.Random(20261128)
        rpcs = ("GetJob", "ListJobs", "StreamMetrics", "GetWeights", "Classify", "CancelJob",
                 "SubmitJob", "Unauthenticated")
        counts = {}
        for _ in range(240):
            rpc = rng.choice(rpcs)
            user = rng.choice(USERS)
            job = rng.choice(sorted(self.done.values()))
            if rpc == "Unauthenticated":
                code, _, _ = self.c.call("ListJobs", pb.ListJobsRequest(),
                                         rng.choice([None, "nope"]))
                self.assertEqual(code, UNAUTH)
            else:
                self.check(user, rpc, job)
            counts[rpc] = counts.get(rpc, 0) + 1
        print(f"\n{'TLS' if self.tls else 'plaintext'}: 240 calls on one connection: {counts}")

    def test_health_needs_no_token(self):
        code, status = self.c.health()
        self.assertEqual((code, status), (OK, 1))  # SERVING
        code, status = self.c.health(token="not-a-token")
        self.assertEqual((code, status), (OK, 1))
        # Health reveals nothing else: the service itself still wants a token.
        code, _, _ = self.c.call("ListJobs", pb.ListJobsRequest())
        self.assertEqual(code, UNAUTH)


class IdentityOverTlsTest(IdentityBase, unittest.TestCase):
    tls = True


class IdentityOverPlaintextLoopbackTest(IdentityBase, unittest.TestCase):
    tls = False


if __name__ == "__main__":
    unittest.main()
