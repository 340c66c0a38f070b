"""The app in a real browser: Debian's chromium driven by Playwright (no browser download).

    apt-get install -y chromium && .venv/bin/pip install playwright==1.65.2   # no `playwright install`
    OMP_NUM_THREADS=1 .venv/bin/python -m pytest tests/test_browser.py -q

It types a prompt holding ``<script>`` and ``<img onerror>``, picks the ``interval`` policy (forced handoffs),
waits for streamed text with a teacher-coloured span, checks the markup rendered as text and never ran,
clicks a teacher span and finds the call inspector filled (asked, written, the student's own text; the
ending without the call), checks the empty-prompt message, opens Compare and the Explorer (the plotly chart
renders, a sample's trace is coloured) and saves screenshots to ``artifacts/screenshots/``. Skips only when
chromium or playwright is missing.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
SCREENS = Path(__file__).resolve().parents[1] / "screenshots"  # git-ignored, the one to look at
XSS = 'Add 2 and 3. <script>window.__xss = "script"</script><img src=x onerror="window.__xss = \'img\'">'

if not (os.path.exists(CHROMIUM) and shutil.which(CHROMIUM)):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install playwright")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
DEMO: list = []  # the app under test, for a look at its queue


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from relay_demo.ui import QUEUE, build_demo, launch_options
    from relay_demo.ui import handlers as h
    from tests.test_ui_handlers import make_results

    results = tmp_path_factory.mktemp("results")
    make_results(results)
    h.get_pair("tiny-random")  # load before the browser waits on it
    demo = build_demo(results, hosted=False)
    demo.queue(**QUEUE).launch(prevent_thread_lock=True, quiet=True, **launch_options())
    DEMO.append(demo)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def page(app):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.dialogs = []
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        pg.goto(app, wait_until="domcontentloaded")
        pg.wait_for_selector("#prompt textarea", timeout=30_000)
        yield pg
        browser.close()


def _answered(page, timeout: int = 30_000) -> None:
    """Wait for the Playground's answer and its last update (the teacher alone, timed after it on a tiny
    pair): a Clear before that update would be overwritten by it."""
    page.wait_for_selector("#chat-counters :text('finished')", timeout=timeout)
    page.wait_for_function(
        "!document.querySelector('#chat-counters').innerHTML.includes('being measured')", timeout=timeout
    )


def _pick(page, elem_id: str, option: str) -> None:
    """Choose an option of a Gradio dropdown by its label."""
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option).first.click()


def test_playground_streams_coloured_spans_and_escapes_markup(page):
    # the tiny-random pair so the test does not depend on the trained pair being present
    _pick(page, "pair", "tiny-random")
    _pick(page, "policy", "interval: forced handoff every k tokens")
    page.wait_for_selector("#param-every", state="visible")
    page.fill("#prompt textarea", XSS)
    page.click("#send")
    page.wait_for_selector("#chat .relay-teacher", timeout=30_000)
    page.wait_for_selector("#chat-counters :text('finished')", timeout=30_000)
    chat = page.locator("#chat")
    user_text = chat.locator(".relay-user").first.inner_text()
    assert "<script>" in user_text and "<img src=x" in user_text  # shown as text
    assert chat.locator("script").count() == 0 and chat.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None and page.dialogs == []
    title = chat.locator(".relay-teacher").first.get_attribute("title")
    assert "teacher" in title and "token" in title
    counters = page.locator("#chat-counters")  # the FLOPs split and the wall time, each defined on hover
    assert "size ratio" in counters.locator("[data-counter='student FLOPs']").get_attribute("title")
    # measured right after the answer (the tiny pair's teacher alone takes milliseconds)
    wall = "#chat-counters [data-counter='wall vs teacher alone']"
    page.wait_for_selector(f"{wall}[title*='for the teacher alone']", timeout=30_000)
    page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)


def test_clicking_a_teacher_span_fills_the_call_inspector(page):
    # the answer of the test above: interval handoffs on tiny-random, finished
    page.locator("#chat .relay-teacher").first.click()
    box = page.locator("#call-inspector")
    page.wait_for_selector("#call-inspector #inspector-student .relay-student", timeout=30_000)
    text = box.inner_text()
    assert "Call 1 of" in text and "asked 4" in text and re.search(r"written \d", text)  # the sidebar's n
    assert "student tokens since the last handoff" in text and "prefilled" in text
    assert box.locator("#inspector-student .relay-student").inner_text().strip()  # the student's own text
    box.screenshot(path=str(SHOTS / "call-inspector.png"))
    page.click("#inspect-continue")
    page.wait_for_selector("#call-continue #continue-without", timeout=30_000)
    assert "without call 1" in page.locator("#call-continue").inner_text().lower()  # headings in capitals
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the settings sidebar folded away
    toggle = page.get_by_label("Toggle Sidebar").first
    toggle.click()
    page.locator("#inspector-box").screenshot(path=str(SHOTS / "call-inspector-phone.png"))
    toggle.click()
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_empty_prompt_shows_a_message(page):
    page.fill("#prompt textarea", "")
    page.click("#send")
    page.wait_for_selector("#chat-note .relay-error", timeout=15_000)
    assert "empty" in page.locator("#chat-note").inner_text()
    page.locator("#chat-note").screenshot(path=str(SHOTS / "empty-prompt.png"))


def test_stop_is_a_normal_end(page):
    # issue 31, finding 3: Stop used to cancel the event (Gradio's red "Error" badges, counters lost). Another
    # request holds the pair here, so Stop lands while this one waits, whatever the machine's speed.
    from relay_demo.ui import handlers as h

    pair = h.get_pair("tiny-random")
    _pick(page, "pair", "tiny-random")
    answers = page.locator("#chat [data-turn]").count()
    with pair.lock:
        page.fill("#prompt textarea", "hello")
        page.click("#send")
        page.wait_for_selector("#chat-note :text('Waiting for the model')", timeout=30_000)
        page.click("#stop")
        page.wait_for_selector("#chat-note :text('Stopped before the model was free')", timeout=30_000)
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator("#chat [data-turn]").count() == answers  # nothing written, nothing added
    assert page.locator("#prompt textarea").input_value() == "hello"  # the prompt is back in the box
    page.locator("#chat-note").screenshot(path=str(SHOTS / "stopped-while-waiting.png"))
    page.click("#send")  # the next Send is not stopped by that press
    _answered(page)
    assert "stopped" not in page.locator("#chat-counters").inner_text()
    page.click("#clear")  # the tests after this one start a conversation of their own


def test_stop_while_the_request_waits_in_gradios_queue(page):
    # Stop used to miss a request still in Gradio's queue (its handler not called yet): it then ran in full.
    # Two other users wait on the pair here and fill the "relay" slots, so this Send is queued for certain.
    import time

    from relay_demo.ui import QUEUE
    from relay_demo.ui import handlers as h

    pair, slots = h.get_pair("tiny-random"), QUEUE["default_concurrency_limit"]
    _pick(page, "pair", "tiny-random")
    answers = page.locator("#chat [data-turn]").count()
    queued = lambda: DEMO[0]._queue.event_queue_per_concurrency_id["relay"].queue  # noqa: E731
    others = [page.context.browser.new_page() for _ in range(slots)]  # other users: sessions of their own
    with pair.lock:
        for other in others:
            other.goto(page.url, wait_until="domcontentloaded")
            other.wait_for_selector("#prompt textarea", timeout=30_000)
            _pick(other, "pair", "tiny-random")
            other.fill("#prompt textarea", "hello")
            other.click("#send")
            other.wait_for_selector("#chat-note :text('Waiting for the model')", timeout=30_000)
        page.fill("#prompt textarea", "hello")
        page.click("#send")
        deadline = time.monotonic() + 30
        while not queued() and time.monotonic() < deadline:  # polls a state, not a guess at timing
            time.sleep(0.05)
        assert len(queued()) == 1, "the Send did not wait in the queue"
        with page.expect_response(lambda r: "/run/" in r.url and r.request.method == "POST"):
            page.click("#stop")  # the press (queue=False) is a request of its own: wait for its answer
    for other in others:  # the pair is free: the two others answer, then this request starts, stopped
        other.wait_for_selector("#chat-counters :text('finished')", timeout=60_000)
        other.close()
    page.wait_for_selector("#chat-note :text('Stopped before the model was free')", timeout=60_000)
    assert page.locator("#chat [data-turn]").count() == answers  # nothing written
    page.click("#send")  # the next Send is not stopped by that press
    _answered(page)
    assert "stopped" not in page.locator("#chat-counters").inner_text()
    page.click("#clear")


def test_choosing_a_pair_sets_its_own_defaults(page):
    # issue 31, findings 6 and 9: the trained pair's span length and answer length, a baseline pair's policy
    _pick(page, "pair", "qwen2.5-coder-0.5b-1.5b-relay")
    # all three at once: the pair before (tiny-random) has max_n 32 too, so max_n alone could match too soon
    page.wait_for_function(
        "document.querySelector('#max-n input[type=number]').value === '32'"
        " && document.querySelector('#max-tokens input[type=number]').value === '512'"
        " && document.querySelector('#policy input').value.startsWith('learned')",
        timeout=30_000,
    )
    _pick(page, "pair", "tiny-arith-base")
    page.wait_for_selector("#param-tau", state="visible", timeout=30_000)  # the confidence policy's knob
    assert page.locator("#policy input").input_value().startswith("confidence")
    assert page.locator("#max-n input[type=number]").input_value() == "16"
    page.click("#pair input")
    assert (
        page.get_by_role("option", name="relayllm-qwen3-1.7b-8b (needs vllm; this app runs hf)").count() == 1
    )
    page.get_by_role("option", name="tiny-random").first.click()
    page.wait_for_selector("#param-every", state="visible", timeout=30_000)  # random weights: interval
    page.locator("#pair-status").screenshot(path=str(SHOTS / "pair-defaults.png"))


def test_on_a_phone_the_sidebar_starts_folded(app, page):
    # issue 31, finding 9: at 390 px the open sidebar covered the page on load
    phone = page.context.browser.new_page(viewport={"width": 390, "height": 844})
    try:
        phone.goto(app, wait_until="domcontentloaded")
        phone.wait_for_selector("#prompt textarea", timeout=30_000)
        folded = "!document.querySelector('.sidebar').classList.contains('open')"
        phone.wait_for_function(folded, timeout=30_000)
        phone.screenshot(path=str(SHOTS / "phone-on-load.png"))
    finally:
        phone.close()


def test_compare_tab(page):
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-prompt textarea", "What is 12 * 3?")
    page.click("#compare-run")
    page.wait_for_selector("#cmp-teacher-only-answer :text('Final answer')", timeout=45_000)
    assert page.locator("#cmp-relay .relay-teacher").count() >= 1
    assert page.locator("#cmp-student-only .relay-teacher").count() == 0
    page.locator("#cmp-relay .relay-teacher").nth(1).click()
    page.wait_for_selector("#compare-call-inspector #inspector-student .relay-student", timeout=30_000)
    assert "Call 2 of" in page.locator("#compare-call-inspector").inner_text()
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)
    # issue 31 (left then): a new run left the previous answer's call in the inspector
    before = page.locator("#cmp-teacher-only").inner_text()
    page.fill("#compare-prompt textarea", "What is 7 * 8?")
    page.click("#compare-run")
    page.wait_for_function(
        "!document.querySelector('#compare-call-inspector').innerText.includes('Call 2 of')", timeout=30_000
    )
    done = """([old]) => document.querySelector('#cmp-teacher-only').innerText !== old
        && document.querySelector('#cmp-teacher-only-answer').innerText.includes('Final answer')"""
    page.wait_for_function(done, arg=[before], timeout=45_000)  # the run ends before the next test starts
    assert "Call 2 of" not in page.locator("#compare-call-inspector").inner_text()


def test_explorer_renders_the_chart_and_a_trace(page):
    page.get_by_role("tab", name="Explorer").click()
    page.wait_for_selector("#plot-accuracy .js-plotly-plot .scatterlayer .trace", timeout=30_000)
    legend = page.locator("#plot-accuracy .legend").first.text_content()
    assert "relay" in legend and "reported in the paper" not in legend  # another pair's accuracy axis
    page.wait_for_selector("#sample-trace .relay-span", timeout=15_000)
    page.screenshot(path=str(SHOTS / "explorer.png"), full_page=True)
    _pick(page, "sample", "relay · arith-test-0-1 · ✓ · 1 call · 4 teacher tok")
    page.wait_for_selector("#sample-trace .relay-teacher", timeout=15_000)
    trace = page.locator("#sample-trace")
    assert trace.locator("img").count() == 0 and "<img src=x onerror" in trace.inner_text()
    trace.screenshot(path=str(SHOTS / "explorer-trace.png"))
    assert page.evaluate("window.__xss") is None and page.dialogs == []
    page.locator("#cost-axis").get_by_text("decode FLOPs vs teacher alone").click()  # rows without a split
    page.wait_for_selector("#plot-flops .legend :text('no split recorded')", timeout=30_000)
    page.locator("#plot-flops").screenshot(path=str(SHOTS / "explorer-cost.png"))


def test_explorer_draws_error_bars_and_compares_a_clicked_point(page):
    # the accuracy axis of the test above's pair: every point has its 95% interval as an error bar
    page.locator("#y-axis").get_by_text("accuracy", exact=True).click()
    page.wait_for_selector("#plot-accuracy .scatterlayer .errorbar", state="attached", timeout=30_000)
    page.locator("#compare-with input").wait_for(timeout=15_000)  # the "compare with…" control
    point = page.locator("#plot-accuracy .scatterlayer .trace").filter(has=page.locator(".errorbar")).first
    box = point.locator("path.point").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#plot-accuracy .hoverlayer :text('95% intervals')", timeout=15_000)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector("#compare-table :text('exact McNemar p')", timeout=30_000)
    chosen = page.locator("#drill-setting input").input_value()
    assert chosen != "all settings" and "against" not in chosen
    assert "right where student is wrong" in page.locator("#compare-table").inner_text()
    assert "power:" in page.locator("#compare-power").inner_text()
    sample = page.locator("#sample input").input_value()
    assert sample.startswith(chosen.replace("@", " ") + " · ")  # its samples opened
    page.screenshot(path=str(SHOTS / "explorer-compare.png"), full_page=True)
    SCREENS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENS / "explorer-compare.png"), full_page=True)


def test_explorer_drill_down_reaches_every_setting(page):
    """A summary row opens its setting's samples; the list filters by right/wrong and pages. Undefined
    figures read n/a, and the legend under the table says why."""
    legend = page.locator("#summary-na").inner_text()
    assert "method without a knob: param (student, teacher, relay)" in legend
    assert "what a saving is measured against" in legend
    page.locator("#summary-table").get_by_text("student", exact=True).filter(visible=True).first.click()
    page.wait_for_function(  # its param cell reads n/a: the row still names its setting
        "document.querySelector('#drill-setting input').value === 'student'", timeout=30_000
    )
    page.locator("#summary-table").screenshot(path=str(SHOTS / "explorer-summary.png"))
    page.locator("#summary-na").screenshot(path=str(SHOTS / "explorer-summary-na.png"))
    cell = page.locator("#summary-table").get_by_text("confidence", exact=True).filter(visible=True)
    cell.first.click()  # the τ 0.3 row
    page.wait_for_function(
        "document.querySelector('#drill-setting input').value === 'confidence@0.3'", timeout=30_000
    )
    page.wait_for_function(
        "document.querySelector('#sample input').value.startsWith('confidence 0.3 · ')", timeout=30_000
    )
    page.wait_for_selector(
        "#compare-table :text('confidence@0.3 right where student is wrong')", timeout=30_000
    )
    page.locator("#drill-outcome").get_by_text("wrong", exact=True).click()
    page.wait_for_selector("#drill-note :text('of 5 ·')", timeout=30_000)  # 5 of 10 right at τ 0.3
    page.click("#sample input")
    options = [o.split("\n")[-1] for o in page.get_by_role("option").all_inner_texts()]  # less the ✓ mark
    assert len(options) == 5 and all(o.startswith("confidence 0.3 · ") and " ✗ · " in o for o in options)
    page.keyboard.press("Escape")
    page.locator("#drill-outcome").get_by_text("any", exact=True).click()
    _pick(page, "drill-setting", "all settings")
    page.wait_for_selector("#drill-note :text('page 1 of 1')", timeout=30_000)


def test_explorer_apgr_axis_labels_the_paper_point(page):
    page.locator("#y-axis").get_by_text("gap recovered (APGR)").click()
    page.wait_for_selector("#plot-accuracy .legend :text('reported in the paper')", timeout=30_000)
    legend = page.locator("#plot-accuracy .legend").first.text_content()
    assert "relay · tiny-random · arith" in legend
    assert "relayllm-qwen3-1.7b-8b" in page.locator("#plot-accuracy").first.text_content()  # its pair named
    page.locator("#plot-accuracy").screenshot(path=str(SHOTS / "explorer-apgr.png"))


def test_about_tab(page):
    page.get_by_role("tab", name="About").click()
    page.wait_for_selector("text=RelayLLM in a few lines", timeout=10_000)
    page.wait_for_selector("text=ui-run", timeout=10_000)
    page.wait_for_selector("#about-sizes :text('teacher 0.36M')", timeout=10_000)  # the sidebar's pair
    page.screenshot(path=str(SHOTS / "about.png"), full_page=True)


def test_playground_shows_the_pairs_own_examples_and_warns_off_task(page):
    page.get_by_role("tab", name="Playground").click()
    _pick(page, "pair", "tiny-arith")
    page.wait_for_selector("#chat-purpose :text('synthetic arithmetic')", timeout=15_000)
    page.locator("#chat-examples").get_by_text("Dan has 83 eggs", exact=False).first.click()
    # the click's update reaches the textbox a moment later (a loaded machine: many moments)
    page.wait_for_function(
        "document.querySelector('#prompt textarea').value.startsWith('Dan has 83 eggs')", timeout=30_000
    )
    page.fill("#prompt textarea", "What is the capital of France?")
    page.click("#send")
    page.wait_for_selector("#chat-note :text('expect noise')", timeout=30_000)
    page.screenshot(path=str(SHOTS / "playground-off-task.png"), full_page=True)
    _pick(page, "pair", "tiny-random")
    page.wait_for_selector("#chat-purpose :text('Random untrained')", timeout=15_000)
    assert "Dan has 83 eggs" not in page.locator("#chat-examples").inner_text()


def _greedy(page, on: bool) -> None:
    """The sidebar's temperature: 0 (the marks below then do not depend on random draws) or its default."""
    value = "0" if on else "0.7"
    page.fill("#temperature input[type=number]", value)
    page.press("#temperature input[type=number]", "Enter")
    page.wait_for_function(
        f"document.querySelector('#temperature input[type=range]').value === '{value}'", timeout=15_000
    )


def _example(page, prefix: str, prompt_box: str) -> None:
    """tiny-arith's first example (Dan's eggs, 534) into the tab's prompt box."""
    page.wait_for_selector(f"#{prefix}-purpose :text('synthetic arithmetic')", timeout=15_000)
    page.locator(f"#{prefix}-examples").get_by_text("Dan has 83 eggs", exact=False).first.click()
    page.wait_for_function(
        f"document.querySelector('{prompt_box}').value.startsWith('Dan has 83 eggs')", timeout=30_000
    )


def test_compare_marks_a_pairs_example_right_or_wrong(page):
    # issue 31, finding 7: each column of a pair's example says whether its final answer is right
    page.get_by_role("tab", name="Compare").click()
    _pick(page, "pair", "tiny-arith")
    _greedy(page, True)
    _example(page, "compare", "#compare-prompt textarea")
    page.click("#compare-run")
    page.wait_for_selector("#cmp-teacher-only-answer :text('expected 534')", timeout=120_000)
    for side in ("student-only", "relay", "teacher-only"):
        answer = page.locator(f"#cmp-{side}-answer")
        assert "expected 534" in answer.inner_text()
        assert answer.locator(".relay-right").count() + answer.locator(".relay-wrong").count() == 1
    assert page.locator("#cmp-relay-answer .relay-right").count() == 1  # its two calls fix the sums
    page.screenshot(path=str(SHOTS / "compare-graded.png"), full_page=True)


def test_continue_without_a_call_compares_like_with_like(page):
    # issue 31, finding 8: on Dan's eggs the trained student calls twice; the teacher's second span is what
    # the student writes there itself (489), so that call changed nothing; without the first, 5 * 67 is wrong
    page.get_by_role("tab", name="Playground").click()
    page.click("#clear")
    _example(page, "chat", "#prompt textarea")
    page.click("#send")
    page.wait_for_selector("#chat-counters :text('finished')", timeout=120_000)
    page.locator('#chat .relay-teacher[data-call="1"]').first.click()
    page.wait_for_selector("#call-inspector :text('Call 2 of 2')", timeout=30_000)
    page.click("#inspect-continue")
    page.wait_for_selector("#call-continue :text('call 2 changed nothing')", timeout=60_000)
    out = page.locator("#call-continue")
    assert "only call 2 is blocked" in out.inner_text() and "greedy" in out.inner_text()
    assert out.locator(".relay-right").count() == 2  # both endings right: nothing pinned on the call
    out.screenshot(path=str(SHOTS / "continue-changed-nothing.png"))
    page.locator('#chat .relay-teacher[data-call="0"]').first.click()
    page.wait_for_selector("#call-inspector :text('Call 1 of 2')", timeout=30_000)
    page.click("#inspect-continue")
    page.wait_for_selector("#call-continue #continue-without .relay-wrong", timeout=60_000)
    assert (
        out.locator("#continue-with .relay-right").count() == 1 and "changed nothing" not in out.inner_text()
    )
    out.screenshot(path=str(SHOTS / "continue-without-call-1.png"))
    _greedy(page, False)


@pytest.fixture
def fresh_app(repo_dir, tmp_path):
    """``python app.py`` in a process of its own: nothing imported or loaded before the first click."""
    import contextlib
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=repo_dir, env=env, stdout=log, stderr=log)
    url, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 600  # imports on a loaded machine
    try:
        while True:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=5).close()
                break
            with contextlib.suppress(subprocess.TimeoutExpired):  # returns at once if the app died
                proc.wait(timeout=1)
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_fresh_app_answers_a_pair_chosen_and_sent_at_once(fresh_app, page):
    # issue 31, finding 1: the pair change's handlers and Send used to import transformers at once
    url, log = fresh_app
    fresh = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        fresh.goto(url, wait_until="domcontentloaded")
        fresh.wait_for_selector("#prompt textarea", timeout=60_000)
        _pick(fresh, "pair", "tiny-random")
        fresh.fill("#prompt textarea", "hello")
        fresh.click("#send")
        ended = (
            "#chat-counters :text('finished'), #chat-note .relay-error, :text-is('Error')"  # Gradio's badge
        )
        fresh.wait_for_selector(ended, timeout=300_000)
        fresh.screenshot(path=str(SHOTS / "fresh-app-first-send.png"), full_page=True)
        note = fresh.locator("#chat-note").inner_text()
        assert fresh.locator("#chat .relay-student").count() >= 1, (note, log.read_text()[-3000:])
        assert "Loading pair" not in note and fresh.get_by_text("Error", exact=True).count() == 0
    finally:
        fresh.close()
