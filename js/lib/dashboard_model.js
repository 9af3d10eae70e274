// Which job a Train LoRA node shows, and a job snapshot turned into the dashboard's display values.
// Pure, no DOM, no host: the wiring (js/train_dashboard.js) fetches and listens, the view draws.
//
// Binding rule: a node shows the newest job whose `name` equals the node's `name` widget, normalised
// the way the trainer names its files (nodes/host/run_files.py: trimmed, without ".safetensors"), and
// among those the node's own runs first (a job records the id of the node that ran it): two nodes with
// the same name each show their own run, and a run queued from elsewhere shows where no own run exists.

import { formatBatch, formatBytes, formatEta, formatLoss, formatLr, formatRate, MISSING } from "./dashboard_format.js";

export const RUNNING_STATES = new Set(["queued", "running"]);
export const END_STATES = new Set(["done", "stopped", "interrupted", "error"]);

const STATE_LABELS = {
  queued: "queued", running: "training", done: "done", stopped: "stopped", interrupted: "cancelled",
  error: "failed",
};
const REQUEST_LABELS = { stop: "stop & save", save: "save", sample: "sample" };

/** The job name the trainer gives a run for this `name` widget value (run_files.RunFiles.for_name). */
export function jobNameOf(widgetValue) {
  if (typeof widgetValue !== "string") return "";
  const trimmed = widgetValue.trim();
  return trimmed.endsWith(".safetensors") ? trimmed.slice(0, -".safetensors".length) : trimmed;
}

const createdAt = (job) => (typeof job?.created_at === "number" ? job.created_at : -Infinity);
const own = (job, nodeId) => (nodeId != null && job?.node_id === String(nodeId) ? 1 : 0);

/** Whether `a` ranks before `b` for node `nodeId`: its own run first, then the newer (ties keep `b`). */
function ranksBefore(a, b, nodeId) {
  return own(a, nodeId) !== own(b, nodeId) ? own(a, nodeId) > own(b, nodeId) : createdAt(a) > createdAt(b);
}

/**
 * The job named `name` that node `nodeId` shows: its own newest run, else the newest run of that name
 * (by created_at; the list's order breaks ties, newest first); null if there is none.
 */
export function pickJob(jobs, name, nodeId = null) {
  if (!Array.isArray(jobs) || !name) return null;
  let best = null;
  for (const job of jobs) {
    if (job && job.name === name && (best === null || ranksBefore(job, best, nodeId))) best = job;
  }
  return best;
}

/**
 * Whether an event's `snapshot` should replace what node `nodeId` named `name` shows (`current`, or
 * null): the same job's newer news, or a job for this name that ranks no lower than the shown one.
 */
export function acceptsSnapshot(current, snapshot, name, nodeId = null) {
  if (!snapshot || typeof snapshot.id !== "string" || snapshot.name !== name || !name) return false;
  if (!current) return true;
  if (snapshot.id === current.id) return !(snapshot.updated_at < current.updated_at);
  return !ranksBefore(current, snapshot, nodeId);
}

/** The snapshot's own loss as a history row, for drawing it before the history route answers. */
export function historyRow(snapshot) {
  const step = snapshot?.step;
  if (!Number.isInteger(step) || step < 1 || typeof snapshot.loss !== "number") return null;
  return [step, snapshot.loss, typeof snapshot.smoothed_loss === "number" ? snapshot.smoothed_loss : null];
}

/** The snapshot's latest validation loss as a validation row, or null when there is none. */
export function validationRow(snapshot) {
  const step = snapshot?.validation_step;
  if (!Number.isInteger(step) || typeof snapshot.validation_loss !== "number") return null;
  return [step, snapshot.validation_loss];
}

/** Samples grouped by step, newest step first; within a step in the order the trainer added them. */
export function sampleGroups(samples, resolveUrl = (url) => url) {
  const groups = new Map();
  for (const s of Array.isArray(samples) ? samples : []) {
    if (!s || typeof s.url !== "string") continue;
    if (!groups.has(s.step)) groups.set(s.step, []);
    groups.get(s.step).push({ name: s.name, label: s.label || s.name, src: resolveUrl(s.url) });
  }
  return [...groups.entries()].sort((a, b) => b[0] - a[0]).map(([step, items]) => ({ step, items }));
}

/**
 * Display values for `snapshot` (a job snapshot, or null when the node has no job yet). `name` is
 * the node's job name; `resolveUrl` turns a route path into an address the page can load.
 */
export function viewModel(snapshot, { name = "", resolveUrl = (url) => url } = {}) {
  if (!snapshot) {
    return {
      hasJob: false, jobId: "", state: "none", stateLabel: name ? `no run named “${name}” yet` : "no name set",
      running: false, canControl: false, progress: 0, stepText: MISSING, rate: MISSING, eta: MISSING,
      loss: MISSING, smoothed: MISSING, validation: MISSING, lr: MISSING, memory: MISSING,
      samples: [], checkpoints: [], pending: "", error: "", result: "", batch: "", memoryPlan: "", memoryChoice: "",
    };
  }
  const { state, step, total } = snapshot;
  const running = RUNNING_STATES.has(state);
  // While running, what the run is doing besides steps: "encoding 3/40", "sampling step 0", "saving".
  const phase = running && snapshot.phase && snapshot.phase !== "training"
    ? [snapshot.phase, snapshot.phase_detail].filter(Boolean).join(" ") : "";
  const progress = total > 0 ? Math.min(1, Math.max(0, step / total)) : 0;
  const pending = (snapshot.pending_requests || []).map((r) => REQUEST_LABELS[r] || r);
  const checkpoints = [...(snapshot.checkpoints || [])].sort((a, b) => a.step - b.step)
    .map((c) => ({ step: c.step, loraName: c.lora_name }));
  const validation = typeof snapshot.validation_loss === "number"
    ? `${formatLoss(snapshot.validation_loss)} @ ${snapshot.validation_step ?? "?"}` : MISSING;
  return {
    hasJob: true,
    jobId: snapshot.id,
    state,
    stateLabel: (STATE_LABELS[state] || state) + (phase ? ` · ${phase}` : ""),
    running,
    canControl: state === "running",
    progress,
    stepText: `${step} / ${total}`,
    rate: formatRate(snapshot.steps_per_second),
    eta: state === "running" ? formatEta(snapshot.eta_seconds) : MISSING,
    loss: formatLoss(snapshot.loss),
    smoothed: formatLoss(snapshot.smoothed_loss),
    validation,
    lr: formatLr(snapshot.lr),
    memory: formatBytes(snapshot.memory_bytes),
    samples: sampleGroups(snapshot.samples, resolveUrl),
    checkpoints,
    pending: pending.length ? `requested: ${pending.join(", ")}` : "",
    error: snapshot.error || "",
    result: END_STATES.has(state) && snapshot.lora_name ? `saved ${snapshot.lora_name}` : "",
    batch: formatBatch(snapshot.batch), // shown only when the run spans several processes
    memoryPlan: snapshot.memory_plan || "", // how the run fits in memory, in the trainer's words
    // Shown beside the job when memory_mode auto changed a setting ("gradient checkpointing (auto): ...").
    memoryChoice: (snapshot.memory_plan || "").includes("(auto)") ? snapshot.memory_plan.split(":")[0] : "",
  };
}
