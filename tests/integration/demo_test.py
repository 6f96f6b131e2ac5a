"""A newcomer's first run: scripts/demo.sh (packages and build already in
place) must end with a model that clearly learned, and must say where the
dashboard is; `traind --help` must list the daemon's flags."""
import os
import re
import shutil
import subprocess
import unittest

from harness import TRAIND, temp_root

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../.."))


class DemoTest(unittest.TestCase):
    def test_the_demo_learns_and_prints_the_dashboard(self):
        state = temp_root("traind-demo-")
        try:
            p = subprocess.run([os.path.join(ROOT, "scripts/demo.sh")], cwd=ROOT,
                               env=dict(os.environ, DEMO_NO_SETUP="1", STATE=state),
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=600)
            self.assertEqual(p.returncode, 0, p.stdout[-3000:] + p.stderr[-3000:])
            self.assertRegex(p.stdout, r"watch it in a browser: http://127\.0\.0\.1:\d+/")
            top1 = float(re.search(r"^top-1\s+([\d.]+)%", p.stdout, re.M).group(1))
            # 4 classes: chance is 25 %. Measured 80.8 % (seeded).
            self.assertGreater(top1, 60.0, p.stdout[-2000:])
            self.assertTrue(os.path.getsize(os.path.join(state, "job-000002.pth")) > 1e6)
        finally:
            shutil.rmtree(state, ignore_errors=True)

    def test_traind_help_lists_its_flags(self):
        p = subprocess.run([TRAIND, "--help"], capture_output=True, text=True, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout + p.stderr
        for flag in ("--listen", "--http-listen", "--state-dir", "--tokens-file", "--workers"):
            self.assertIn(flag, out)
        self.assertIn("--listen (default: 127.0.0.1:50051)", out)
        self.assertNotIn("No flags matched", out)


if __name__ == "__main__":
    unittest.main()
