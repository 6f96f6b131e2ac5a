"""The dashboard in a real browser: headless Chromium driven by Selenium
against the real traind with real jobs training. Screenshots of every page
go to $TRAIND_ARTIFACTS/dashboard (build/test-artifacts/dashboard from
ctest)."""
import json
import os
import shutil
import time
import unittest

from harness import start_with_users
from http_test import Http

ARTIFACTS = os.path.join(os.environ.get("TRAIND_ARTIFACTS", "/tmp/traind-artifacts"), "dashboard")
SMALL = {"kind": "SCRATCH", "dataset": "subset", "imageSize": 32, "batchSize": 8,
         "loaderThreads": 1}


def browser_missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "python3-selenium is not installed (scripts/install-deps.sh --test installs it)"
    for path in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not os.path.exists(path):
            return f"{path} is missing (chromium and chromium-driver; scripts/install-deps.sh --test)"
    return None


class DashboardTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        started = time.time()
        reason = browser_missing()
        if reason:
            raise unittest.SkipTest(reason)
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        start_with_users(cls, "traind-dashboard-", {"alice": "", "bob": ""},
                         ["--http-listen=127.0.0.1:0"])
        cls.api = Http(cls.d.http_url, cls.tokens["alice"])
        # A finished job for the report, and a sweep fine-tuned from it.
        cls.done = cls.submit(dict(SMALL, epochs=2))
        cls.wait(cls.done)
        cls.sweep = cls.submit({"kind": "SWEEP", "dataset": "subset", "imageSize": 32,
                                "batchSize": 8, "loaderThreads": 1, "fromJob": cls.done,
                                "sweep": {"epochs": [2], "learningRates": [0.01, 0.001, 0.0001]}})
        cls.wait(cls.sweep)
        print(f"jobs for the pages ready in {time.time() - started:.1f} s", flush=True)
        os.makedirs(ARTIFACTS, exist_ok=True)
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1100", f"--user-data-dir={cls.root}/chromium"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        cls.browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        cls.browser.set_page_load_timeout(60)

    @classmethod
    def tearDownClass(cls):
        if hasattr(cls, "browser"):
            cls.browser.quit()
        if hasattr(cls, "d"):
            cls.d.stop()
        if hasattr(cls, "root"):
            shutil.rmtree(cls.root, ignore_errors=True)

    @classmethod
    def submit(cls, spec):
        status, body = cls.api.json("POST", "/v1/jobs", spec)
        assert status == 200, body
        return body["jobId"]

    @classmethod
    def wait(cls, job, states=("SUCCEEDED", "FAILED", "CANCELLED"), timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = cls.api.json("GET", f"/v1/jobs/{job}")[1]["job"]["state"]
            if state in states:
                return state
            time.sleep(0.3)
        raise AssertionError(f"{job} never reached {states}")

    def until(self, script, timeout=60, what=""):
        """Polls a JavaScript expression until it is truthy; returns it."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.browser.execute_script(f"return ({script});")
            if value:
                return value
            time.sleep(0.2)
        self.fail(f"timed out waiting for {what or script}")

    def shot(self, name):
        time.sleep(0.7)  # the charts redraw twice a second
        self.browser.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))

    def login(self, who):
        b = self.browser
        b.get(self.d.http_url + "/")
        b.delete_all_cookies()  # a fresh session
        b.refresh()
        self.until("document.getElementById('token')", what="the login form")
        b.find_element("id", "token").send_keys(self.tokens[who])
        b.find_element("css selector", "#login button").click()
        self.until(f"document.getElementById('who').textContent.startsWith('{who}')", what=f"{who} logged in")

    def console_errors(self):
        """Script errors (a 401 before logging in is a network entry, not one)."""
        return [e for e in self.browser.get_log("browser")
                if e["level"] == "SEVERE" and e.get("source") != "network"]

    def test_1_a_training_job_live_then_cancelled(self):
        job = self.submit(dict(SMALL, epochs=400))
        self.wait(job, states=("RUNNING",))
        self.login("alice")
        b = self.browser
        b.get(f"{self.d.http_url}/#/")
        self.until(f"document.querySelector('tr[data-job=\"{job}\"] [data-state=\"RUNNING\"]')",
                   what="the running job in the list")
        self.assertTrue(b.execute_script(f"return !!document.querySelector('tr[data-job=\"{self.done}\"]')"))
        self.shot("list")
        b.get(f"{self.d.http_url}/#/job/{job}")
        count = ("(traindCharts.loss && traindCharts.loss.data.datasets.length ? "
                 "traindCharts.loss.data.datasets[0].data.length : 0)")
        first = self.until(count, what="the loss chart's first points")
        later = self.until(f"{count} > {first} && {count}", what="more points while it trains")
        self.assertGreater(later, first)
        self.until("traindCharts.accuracy.data.datasets.length >= 2 && "
                   "traindCharts.accuracy.data.datasets[1].data.length >= 1",
                   what="an epoch on the accuracy chart")
        self.shot("job-running")
        b.execute_script("document.getElementById('cancel').click()")  # one step, as pause
        self.until("document.querySelector('#job-state [data-state=\"CANCELLED\"]')",
                   what="the page showing CANCELLED")
        self.assertEqual(self.api.json("GET", f"/v1/jobs/{job}")[1]["job"]["state"], "CANCELLED")
        self.shot("job-cancelled")
        self.assertEqual(self.console_errors(), [])

    def test_2_report_and_sweep_pages(self):
        self.login("alice")
        b = self.browser
        b.get(f"{self.d.http_url}/#/job/{self.done}")
        top1 = self.until("document.getElementById('top1') && document.getElementById('top1').textContent",
                          what="the evaluation")
        report = self.api.json("GET", f"/v1/jobs/{self.done}/report")[1]
        self.assertIn(f"{100 * report['top1Accuracy']:.1f} %", top1)
        cells = b.execute_script("return document.querySelectorAll('#confusion tbody td').length")
        self.assertEqual(cells, len(report["classes"]) ** 2)
        counts = b.execute_script("return [...document.querySelectorAll('#confusion tbody td')]"
                                  ".map(td => Number(td.textContent || 0))")
        self.assertEqual(counts, [int(c) for c in report["confusion"]])
        href = self.until("document.getElementById('download-pth') && "
                          "document.getElementById('download-pth').href", what="the download button")
        self.assertTrue(href.endswith(f"/v1/jobs/{self.done}/weights?format=pth"), href)
        # Where the last epoch's time went, from the job's own figures.
        latest = self.api.json("GET", f"/v1/jobs/{self.done}")[1]["job"]["latest"]
        self.assertGreater(latest["forwardSeconds"], 0)
        time_text = b.execute_script(
            "const dt = [...document.querySelectorAll('dt')].find(d => d.textContent === 'Epoch time');"
            "return dt ? dt.nextElementSibling.textContent : null")
        self.assertIsNotNone(time_text, "no Epoch time in the job's facts")
        self.assertRegex(time_text, r"^steps [0-9.]+ s \(forward [0-9.]+, backward [0-9.]+, "
                                    r"update [0-9.]+\), waiting for data [0-9.]+ s, validation [0-9.]+ s$")
        self.assertIn(f"forward {latest['forwardSeconds']:.1f},", time_text)
        self.shot("report")
        b.get(f"{self.d.http_url}/#/job/{self.sweep}")
        rows = self.until("document.querySelectorAll('#trial-table tbody tr').length",
                          what="the trial ranking")
        job = self.api.json("GET", f"/v1/jobs/{self.sweep}")[1]["job"]
        self.assertEqual(rows, len(job["trials"]))
        ranked = b.execute_script("return [...document.querySelectorAll('#trial-table tbody tr')]"
                                  ".map(r => Number(r.children[1].textContent))")
        self.assertEqual(ranked, [t["trial"] for t in job["trials"]])
        # Its progress counts trials (3), not the spec's default epochs.
        progress = b.execute_script("return [...document.querySelectorAll('[data-progress]')]"
                                    ".map(e => e.dataset.progress)")
        self.assertIn("3/3 trials", progress)
        curves = self.until("traindCharts.accuracy.data.datasets.filter(d => d.label.startsWith('trial ')).length",
                            what="one validation curve per trial")
        self.assertGreaterEqual(curves, 2)
        self.shot("sweep")

    def test_3_submit_form_starts_a_job(self):
        self.login("alice")
        b = self.browser
        b.get(f"{self.d.http_url}/#/submit")
        self.until("document.getElementById('submit-form')", what="the form")
        b.find_element("id", "dataset").send_keys("no-such-dataset")
        b.find_element("css selector", "#submit-form button").click()
        error = self.until("document.querySelector('.error') && document.querySelector('.error').textContent",
                           what="the validation error")
        self.assertIn("INVALID_ARGUMENT", error)
        self.assertIn("no-such-dataset", error)
        self.shot("submit-error")
        field = b.find_element("id", "dataset")
        field.clear()
        field.send_keys("subset")
        b.find_element("css selector", "#kind option[value='SCRATCH']").click()
        b.find_element("id", "epochs").send_keys("1")
        b.find_element("id", "image-size").send_keys("32")
        b.find_element("id", "batch-size").send_keys("8")
        b.find_element("css selector", "#submit-form button").click()
        job = self.until("(location.hash.match(/#\\/job\\/(.+)/) || [])[1]", what="the new job's page")
        spec = self.api.json("GET", f"/v1/jobs/{job}")[1]["job"]["spec"]
        self.assertEqual((spec["kind"], spec["dataset"], spec["epochs"], spec["imageSize"]),
                         ("SCRATCH", "subset", 1, 32))
        self.shot("submitted")
        self.wait(job)

    def test_4_another_user_cannot_see_the_job(self):
        self.login("bob")
        b = self.browser
        b.get(f"{self.d.http_url}/#/")
        self.until("document.getElementById('jobs') && document.querySelector('main p.muted')"
                   " && document.querySelector('main p.muted').textContent.length", what="bob's list")
        listed = b.execute_script("return [...document.querySelectorAll('tr[data-job]')].map(r => r.dataset.job)")
        self.assertNotIn(self.done, listed)
        self.shot("other-user-list")
        b.get(f"{self.d.http_url}/#/job/{self.done}")
        error = self.until("document.querySelector('.error') && document.querySelector('.error').textContent",
                           what="NOT_FOUND for alice's job")
        self.assertIn("NOT_FOUND", error)
        self.shot("other-user-job")
        # Bob's cookie does not fetch alice's weights either.
        cookies = {c["name"]: c["value"] for c in b.get_cookies()}
        web = Http(self.d.http_url)
        web.cookie = f"traind_token={cookies['traind_token']}"
        self.assertEqual(web.call("GET", f"/v1/jobs/{self.done}/weights")[0], 404)
        self.assertEqual(json.loads(web.call("GET", "/v1/whoami")[2])["user"], "bob")

    def test_5_waiting_reason_priority_pause_and_resume(self):
        running = self.submit(dict(SMALL, epochs=400))
        self.wait(running, states=("RUNNING",))
        waiting = self.submit(dict(SMALL, epochs=400, priority="LOW"))
        self.login("alice")
        b = self.browser
        b.get(f"{self.d.http_url}/#/")
        reason = self.until(f"document.querySelector('tr[data-job=\"{waiting}\"] .waiting') && "
                            f"document.querySelector('tr[data-job=\"{waiting}\"] .waiting').textContent",
                            what="the waiting job's place and reason")
        self.assertIn("#1 waiting: the only slot is in use", reason)
        priority = b.execute_script(
            f"return document.querySelector('tr[data-job=\"{waiting}\"] td.priority').textContent")
        self.assertEqual(priority, "LOW")
        self.shot("list-waiting")
        b.get(f"{self.d.http_url}/#/job/{running}")
        self.until("document.getElementById('pause')", what="the Pause button")
        # In one step in the page: each state event re-renders the buttons.
        b.execute_script("document.getElementById('pause').click()")
        self.until("document.querySelector('#job-state [data-state=\"PAUSED\"]')",
                   what="the page showing PAUSED")
        # Its slot went to the waiting job.
        self.wait(waiting, states=("RUNNING",))
        self.shot("job-paused")
        self.until("document.getElementById('resume')", what="the Resume button")
        # Choosing LOW, as the select does it: its value, then its change event.
        b.execute_script("const s = document.getElementById('priority'); s.value = 'LOW';"
                         " s.dispatchEvent(new Event('change'));")
        self.until("document.querySelector('#priority') && !document.querySelector('#priority').disabled"
                   " && document.querySelector('#priority').value === 'LOW'", what="the priority change")
        deadline = time.time() + 30
        while self.api.json("GET", f"/v1/jobs/{running}")[1]["job"]["spec"].get("priority") != "LOW":
            self.assertLess(time.time(), deadline, "the priority never changed")
            time.sleep(0.2)
        b.execute_script("document.getElementById('resume').click()")
        # The page shows PAUSED until the resume's state event arrives: wait for that event.
        state = self.until("document.querySelector('#job-state [data-state]') && "
                           "document.querySelector('#job-state [data-state]').dataset.state !== 'PAUSED' && "
                           "document.querySelector('#job-state [data-state]').dataset.state",
                           what="the state after resuming")
        self.assertIn(state, ("QUEUED", "RUNNING"))
        self.assertIn(self.api.json("GET", f"/v1/jobs/{running}")[1]["job"]["state"],
                      ("QUEUED", "RUNNING"))
        self.shot("job-resumed")
        for job in (running, waiting):
            self.api.json("POST", f"/v1/jobs/{job}:cancel", {})
            self.wait(job)
        self.assertEqual(self.console_errors(), [])


if __name__ == "__main__":
    unittest.main()
