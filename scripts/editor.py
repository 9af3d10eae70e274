"""Drives the host's real graph editor in a Playwright page: open it, find LoRA Lab's widgets, record errors."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from scripts.comfy_host import PACK_NAME, ComfyHost

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

PACK_URL = f"/extensions/{PACK_NAME}/"
APP = "window.comfyAPI.app.app"


@dataclass
class Editor:
    page: object
    host: ComfyHost
    pack_errors: list[str] = field(default_factory=list)
    pack_scripts: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser, host: ComfyHost) -> Editor:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        editor = cls(page, host)
        page.on("console", editor._on_console)
        page.on("pageerror", lambda e: editor._record(f"pageerror: {e}\n{e.stack or ''}"))
        page.on("response", editor._on_response)
        page.on("requestfailed", lambda r: editor._record(f"request failed: {r.url}") if PACK_URL in r.url else None)
        page.goto(host.url)
        # (newer frontends define window.comfyAPI later: a predicate that throws ends the wait at once)
        page.wait_for_function("() => window.comfyAPI?.app?.app?.graph && "
                               f"{APP}.extensions?.some(e => e.name === 'loralab.StackLoras')", timeout=120_000)
        editor.dismiss_dialogs()
        page.evaluate(f"() => {APP}.graph.clear()")
        return editor

    # --- error bookkeeping: a bare host logs its own 404s (and looks our node ids up in an online
    # registry it cannot reach), so only errors that name the pack's own scripts count -------------
    def _record(self, text: str) -> None:
        if PACK_URL in text:
            self.pack_errors.append(text)

    def _on_console(self, msg) -> None:
        if msg.type == "error":
            self._record(f"console: {msg.text} @ {msg.location.get('url', '')}")

    def _on_response(self, response) -> None:
        if PACK_URL in response.url:
            self.pack_scripts.append(response.url)
            if response.status >= 400:
                self._record(f"HTTP {response.status}: {response.url}")

    # --- editor chrome ---------------------------------------------------------------------------
    def dismiss_dialogs(self, settle_s: float = 2.0, timeout_s: float = 30.0) -> None:
        """Closes what a first visit opens over the canvas (the Templates browser).

        Its close button is an icon without a label (a `pi-times` icon); Escape is the fallback for
        dialogs without one. Waits until no dialog has shown up for `settle_s`.
        """
        dialogs = self.page.locator(".p-dialog:visible, [role=dialog]:visible")
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < settle_s:
            if dialogs.count():
                close = dialogs.first.locator("button:has(.pi-times)")
                if close.count():
                    close.first.click()
                else:
                    self.page.keyboard.press("Escape")
                quiet_since = time.monotonic()
            self.page.wait_for_timeout(200)
        assert dialogs.count() == 0, "a dialog still covers the canvas"

    def js(self, expression: str, arg: object = None) -> object:
        """Evaluates `(arg) => expression` with `app` and `LiteGraph` in scope."""
        return self.page.evaluate(
            f"(arg) => {{ const app = {APP}; const LiteGraph = window.LiteGraph; {expression} }}", arg)

    def save_and_reload(self) -> dict:
        """Saves the graph as workflow JSON text, loads that text back as a user opening the file
        would, and returns the saved workflow. The text stays in the page: a trip through Python
        would turn the editor's `undefined` fields into nulls that its schema check rejects."""
        return self.page.evaluate("""async () => {
            const app = window.comfyAPI.app.app;
            const text = JSON.stringify(app.graph.serialize());
            await app.loadGraphData(JSON.parse(text));
            return JSON.parse(text);
        }""")

    def show_node(self, node_id) -> None:
        """Zooms to 100% on the node, as a user does to work in it: newer frontends (1.49 on ComfyUI 0.33) fit a
        loaded workflow into the view, and below about 60% the editor draws nodes without their DOM widgets."""
        self.js("app.canvas.ds.scale = 1; app.canvas.centerOnNode(app.graph.getNodeById(arg)); "
                "app.canvas.setDirty(true, true);", node_id)
        self.page.wait_for_timeout(300)  # the next draw places the widgets

    @staticmethod
    def saved_node(workflow: dict, node_id) -> dict:
        """The node `node_id` in a saved workflow, found by its id as text: newer frontends (1.49 on ComfyUI 0.33,
        1.58) hand the live node's id as a string and save it as a number."""
        [node] = [n for n in workflow["nodes"] if str(n["id"]) == str(node_id)]
        return node

    def load_workflow_text(self, text: str) -> None:
        self.page.evaluate("async (text) => { await window.comfyAPI.app.app.loadGraphData(JSON.parse(text)); }", text)

    def choose_combo(self, node_id: int, widget: str, value: str) -> None:
        """Chooses `value` in a canvas-drawn combo widget as a user does: a click on the widget opens
        the editor's context menu of values, a click on the entry chooses it."""
        x, y = self.js("""const n = app.graph.getNodeById(arg.id), w = n.widgets.find(w => w.name === arg.name);
            const h = w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT;
            const [cx, cy] = app.canvas.ds.convertOffsetToCanvas(
                [n.pos[0] + n.size[0] / 2, n.pos[1] + (w.y ?? w.last_y) + h / 2]);
            const r = app.canvas.canvas.getBoundingClientRect();
            return [r.left + cx, r.top + cy];""", {"id": node_id, "name": widget})
        self.page.mouse.click(x, y)
        menu = self.page.locator(".litecontextmenu").last
        menu.wait_for()
        menu.locator(".litemenu-entry").filter(has_text=re.compile(f"^{re.escape(value)}$")).click()

    # --- LoRA Lab nodes --------------------------------------------------------------------------
    def add_node(self, node_type: str, pos: tuple[int, int]) -> int:
        return self.js("const n = LiteGraph.createNode(arg.type); n.pos = arg.pos; app.graph.add(n); "
                       "app.canvas.setDirty(true, true); return n.id;", {"type": node_type, "pos": list(pos)})

    def stack(self, node_id: int):
        return self.page.locator(f'.loralab-stack[data-node-id="{node_id}"]')

    def rows(self, node_id: int):
        return self.stack(node_id).locator('[data-testid="loralab-stack-row"]')

    def row(self, node_id: int, index: int):
        return self.rows(node_id).nth(index)

    def widget_value(self, node_id: int, name: str) -> object:
        return self.js("return app.graph.getNodeById(arg.id).widgets.find(w => w.name === arg.name).value;",
                       {"id": node_id, "name": name})

    def add_rows(self, node_id: int, count: int) -> None:
        for _ in range(count):
            before = self.rows(node_id).count()
            self.stack(node_id).get_by_test_id("loralab-stack-add").click()
            self.page.wait_for_function(
                "(a) => document.querySelectorAll(`.loralab-stack[data-node-id=\"${a.id}\"] "
                "[data-testid=loralab-stack-row]`).length === a.n", arg={"id": node_id, "n": before + 1})

    def set_strength(self, node_id: int, index: int, which: str, text: str) -> None:
        box = self.row(node_id, index).get_by_test_id(f"loralab-stack-strength-{which}")
        box.fill(text)
        box.press("Enter")
        box.blur()

    def shown_rows(self, node_id: int) -> list[dict]:
        """The rows as the table shows them, in the backend's JSON shape."""
        return self.stack(node_id).evaluate("""root => [...root.querySelectorAll('[data-testid=loralab-stack-row]')]
            .map(tr => ({
              lora: tr.querySelector('[data-testid=loralab-stack-lora]').value,
              on: tr.querySelector('[data-testid=loralab-stack-on]').checked,
              strength_model: Number(tr.querySelector('[data-testid=loralab-stack-strength-model]').value),
              strength_clip: Number(tr.querySelector('[data-testid=loralab-stack-strength-clip]').value),
            }))""")
