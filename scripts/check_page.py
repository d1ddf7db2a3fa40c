"""Use the web page of ``cln-textgen serve`` in a real headless Chromium.

Starts the server on a free loopback port, opens ``/`` in Chromium, and for
every label: picks it, presses Generate, waits for the streamed texts to
finish, and checks that each shown sample carries that label; then does the
same for a mix of the first two labels (30 % / 70 %) with guidance 2.  Saves
a screenshot of the last one::

    python scripts/check_page.py --run runs/demo --prompt 这家酒店 --out docs/serve-page.png

Needs Debian's ``chromium`` (``apt-get install chromium``) and the PyPI
package ``playwright``, which drives it (no browser download: the system
Chromium is used).
"""

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve import start_server  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a trained run folder (default runs/demo)")
    p.add_argument("--prompt", default="", help="typed into the page's prompt box")
    p.add_argument("-n", type=int, default=2, help="texts per label")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="docs/serve-page.png", help="the screenshot")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.chromium).is_file():
        sys.exit(f"{args.chromium}: no Chromium; apt-get install chromium")
    from playwright.sync_api import sync_playwright

    process, url = start_server(args.run)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#label option').length > 1")
            choices = page.eval_on_selector_all("#label option", "os => os.map(o => o.value)")
            labels = [o for o in choices if o != "all" and "…" not in o]
            mix = next((o for o in choices if "…" in o), None)
            shown = list(labels)
            for label in labels + ([mix] if mix and len(labels) >= 2 else []):
                page.select_option("#label", label)
                if label == mix:  # sliders of the first two labels at 30 and 70, the rest 0
                    for k, slider in enumerate(page.query_selector_all("#mix input")):
                        slider.fill(str([30, 70][k] if k < 2 else 0))
                    page.fill("#guidance", "2")
                    label = f"{labels[0]}=0.3,{labels[1]}=0.7"
                    shown.append(f"{label} (guidance 2)")
                page.fill("#prompt", args.prompt)
                page.fill("#n", str(args.n))
                page.fill("#seed", str(args.seed))
                page.click("#go")
                page.wait_for_function("document.querySelector('#status').textContent.includes('texts')"
                                       " || document.querySelector('#status').className === 'error'",
                                       timeout=120_000)
                status = page.text_content("#status")
                tags = page.eval_on_selector_all(".sample .tag", "ts => ts.map(t => t.textContent)")
                texts = page.eval_on_selector_all(".sample .text", "ts => ts.map(t => t.textContent)")
                if "error" in (page.get_attribute("#status", "class") or "") or tags != [label] * args.n:
                    sys.exit(f"{label}: the page shows {tags} ({status})")
                for text in texts:
                    print(f"{label}: {text}")
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"page checked for {', '.join(shown)}; screenshot: {args.out}")


if __name__ == "__main__":
    main()
