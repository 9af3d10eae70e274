// Graph-editor wiring for "Train LoRA": a live training dashboard inside the node.
//
// Which job a node shows: the newest job in GET /loralab/jobs whose `name` equals the node's `name`
// widget (trimmed, without ".safetensors", as the trainer names runs), the node's own runs first (jobs
// carry the id of the node that ran them); a node shows a run of its name queued from another tab too.
// Live news comes from the `loralab.*` websocket events (each one a full job snapshot); the loss
// history from GET /loralab/jobs/{id}/loss, so a reloaded page recovers the whole chart; the histogram of
// the timesteps drawn comes whole with every snapshot.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { chartModel, mergeRows } from "./lib/dashboard_chart.js";
import { acceptsSnapshot, historyRow, jobNameOf, pickJob, validationRow, viewModel } from "./lib/dashboard_model.js";
import { CHART_HEIGHT, CHART_WIDTH, createDashboard, HISTOGRAM_HEIGHT, HISTOGRAM_WIDTH } from "./lib/dashboard_view.js";
import { runAfter } from "./lib/node_hooks.js";
import { histogramModel } from "./lib/timestep_histogram.js";

const NODE_TYPE = "LoraLabTrainLora";
const NAME_WIDGET = "name";
const DASHBOARD_WIDGET = "loralab_train_dashboard";
const EVENTS = ["loralab.started", "loralab.progress", "loralab.checkpoint", "loralab.sample", "loralab.finished"];
const MIN_WIDTH = 400;
const NAME_SETTLE_MS = 400; // wait for typing to pause before looking up the job of an edited name

const dashboards = new Set(); // the controllers of the Train LoRA nodes now in a graph

async function getJson(route) {
  const resp = await api.fetchApi(route, { cache: "no-store" });
  if (!resp.ok) throw new Error(`GET ${route} answered ${resp.status}`);
  return resp.json();
}

function attachDashboard(node) {
  const nameWidget = node.widgets?.find((w) => w.name === NAME_WIDGET);
  if (!nameWidget || node.loralabDashboard) return;

  let job = null; // the shown job's latest snapshot
  let history = []; // [[step, loss, smoothed], ...]
  let validation = []; // [[step, loss], ...]
  let routeStep = 0; // the history route has answered up to this step
  let generation = 0; // bumped whenever the shown job changes, so late answers for the old one are dropped
  let note = ""; // a problem of ours (a failed request), shown over the job's own message
  let lossRequest = null;
  let lossAgain = false;
  let nameTimer = null;
  let logScale = false; // the chart's loss axis; a view setting, not saved

  const view = createDashboard(document, {
    stop: () => post("stop"), save: () => post("save"), sample: () => post("sample"),
    log: () => {
      logScale = !logScale;
      redraw();
    },
  });
  node.addDOMWidget(DASHBOARD_WIDGET, "loralab_dashboard", view.element, {
    serialize: false, // display only: neither saved in the workflow nor sent with the prompt
    getMinHeight: () => view.minHeight(),
  }).serialize = false;

  const name = () => jobNameOf(nameWidget.value);

  function redraw() {
    const before = view.minHeight();
    view.render(viewModel(job, { name: name(), resolveUrl: (url) => api.apiURL(url) }),
      chartModel({ history, validation, width: CHART_WIDTH, height: CHART_HEIGHT, log: logScale }),
      histogramModel(job?.timestep_histogram, { width: HISTOGRAM_WIDTH, height: HISTOGRAM_HEIGHT }), { note, log: logScale });
    view.element.dataset.nodeId = String(node.id);
    if (view.minHeight() > before) {
      const min = node.computeSize();
      node.setSize([Math.max(node.size[0], min[0], MIN_WIDTH), Math.max(node.size[1], min[1])]);
    }
    node.setDirtyCanvas?.(true, false);
  }

  function forget() {
    job = null;
    history = [];
    validation = [];
    routeStep = 0;
    note = "";
    generation += 1;
  }

  /** Fills the chart from the history route: one request at a time, and one more if news came meanwhile. */
  function loadLoss() {
    if (!job) return;
    if (lossRequest) {
      lossAgain = true;
      return;
    }
    const { id } = job;
    const gen = generation;
    lossRequest = getJson(`/loralab/jobs/${id}/loss?since=${routeStep}`)
      .then((data) => {
        if (gen !== generation) return;
        history = mergeRows(history, data.points || []);
        validation = mergeRows(validation, data.validation || []);
        for (const [step] of data.points || []) routeStep = Math.max(routeStep, step);
        redraw();
      })
      .catch((e) => console.warn("[LoRA Lab] could not load the loss history:", e))
      .finally(() => {
        lossRequest = null;
        if (lossAgain) {
          lossAgain = false;
          loadLoss();
        }
      });
  }

  function onSnapshot(snapshot) {
    if (!acceptsSnapshot(job, snapshot, name(), node.id)) return;
    if (job?.id !== snapshot.id) forget();
    job = snapshot;
    const row = historyRow(snapshot);
    if (row) history = mergeRows(history, [row]);
    const val = validationRow(snapshot);
    if (val) validation = mergeRows(validation, [val]);
    redraw();
    loadLoss();
  }

  /** Finds the newest job for the node's name (after a reload, a load or a rename) and shows it. */
  async function recover() {
    if (job && job.name !== name()) forget();
    const gen = generation;
    try {
      const summary = pickJob(await getJson("/loralab/jobs"), name(), node.id);
      if (gen !== generation) return; // an event brought a newer job meanwhile
      if (!summary) {
        if (job) forget();
        redraw();
        return;
      }
      const snapshot = await getJson(`/loralab/jobs/${summary.id}`);
      if (gen === generation) onSnapshot(snapshot);
    } catch (e) {
      note = `could not read the job list: ${e.message}`;
      redraw();
    }
  }

  async function post(action) {
    if (!job) return;
    note = "";
    try {
      const resp = await api.fetchApi(`/loralab/jobs/${job.id}/${action}`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
      });
      const data = await resp.json().catch(() => ({}));
      if (resp.ok) onSnapshot(data);
      else note = data.error || `the ${action} request answered ${resp.status}`;
    } catch (e) {
      note = `the ${action} request failed: ${e.message}`;
    }
    redraw();
  }

  // An edited name shows that name's job once typing pauses.
  const callback = nameWidget.callback;
  nameWidget.callback = function (...args) {
    const result = callback?.apply(this, args);
    clearTimeout(nameTimer);
    nameTimer = setTimeout(recover, NAME_SETTLE_MS);
    return result;
  };

  const onAdded = node.onAdded;
  node.onAdded = function (...args) {
    const result = onAdded?.apply(this, args);
    dashboards.add(node.loralabDashboard);
    view.element.dataset.nodeId = String(this.id);
    return result;
  };
  const onRemoved = node.onRemoved;
  node.onRemoved = function (...args) {
    dashboards.delete(node.loralabDashboard);
    clearTimeout(nameTimer);
    return onRemoved?.apply(this, args);
  };

  node.loralabDashboard = { onSnapshot, recover }; // listed in `dashboards` once the node is in a graph
  redraw();
  setTimeout(recover, 0); // after a workflow load has set the name widget
}

app.registerExtension({
  name: "loralab.TrainDashboard",

  // Listeners go in setup: the host drops websocket events of types nobody listens to yet.
  setup() {
    for (const type of EVENTS) {
      api.addEventListener(type, ({ detail }) => {
        for (const dashboard of dashboards) dashboard.onSnapshot(detail);
      });
    }
    // Events sent while the socket was down are lost: read the jobs again.
    api.addEventListener("reconnected", () => {
      for (const dashboard of dashboards) dashboard.recover();
    });
  },

  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;

    runAfter(nodeType.prototype, "onNodeCreated", function () {
      attachDashboard(this);
      const min = this.computeSize();
      this.setSize([Math.max(this.size[0], min[0], MIN_WIDTH), min[1]]);
    });
    runAfter(nodeType.prototype, "onConfigure", function () {
      this.loralabDashboard?.recover();
    });
  },
});
