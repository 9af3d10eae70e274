// Job binding and the snapshot -> view-model mapping (js/lib/dashboard_model.js). Run: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  acceptsSnapshot, historyRow, jobNameOf, pickJob, sampleGroups, validationRow, viewModel,
} from "../../js/lib/dashboard_model.js";
import { MISSING } from "../../js/lib/dashboard_format.js";

/** A snapshot shaped as trainer/jobs.py Job.snapshot() returns it. */
function snapshot(overrides = {}) {
  return {
    id: "0123456789abcdef", name: "rings", state: "running", step: 12, total: 48, loss: 0.1234, smoothed_loss: 0.15,
    validation_loss: null, validation_step: null, lr: 1e-4, steps_per_second: 2.5, eta_seconds: 14.4,
    memory_bytes: 3 * 2 ** 30, samples: [], checkpoints: [], error: null, lora_name: null, created_at: 100,
    started_at: 101, updated_at: 110, pending_requests: [], ...overrides,
  };
}

test("the job name is the widget value as the trainer names runs: trimmed, without .safetensors", () => {
  assert.equal(jobNameOf("  rings "), "rings");
  assert.equal(jobNameOf("rings.safetensors"), "rings");
  assert.equal(jobNameOf("my.lora"), "my.lora");
  assert.equal(jobNameOf(undefined), "");
});

test("a node binds to the newest job of its name", () => {
  const jobs = [ // newest first, as GET /loralab/jobs lists them
    { id: "c", name: "other", created_at: 300 },
    { id: "b", name: "rings", created_at: 200 },
    { id: "a", name: "rings", created_at: 100 },
  ];
  assert.equal(pickJob(jobs, "rings").id, "b");
  assert.equal(pickJob([...jobs].reverse(), "rings").id, "b", "by creation time, not list position");
  assert.equal(pickJob(jobs, "nope"), null);
  assert.equal(pickJob(jobs, ""), null);
  assert.equal(pickJob(null, "rings"), null);
  const tie = [{ id: "new", name: "x", created_at: 5 }, { id: "old", name: "x", created_at: 5 }];
  assert.equal(pickJob(tie, "x").id, "new", "a tie keeps the list's newest-first order");
});

test("a node prefers its own runs of its name over newer runs of other nodes", () => {
  const jobs = [
    { id: "theirs", name: "rings", node_id: "7", created_at: 300 },
    { id: "mine", name: "rings", node_id: "3", created_at: 200 },
    { id: "old", name: "rings", created_at: 100 },
  ];
  assert.equal(pickJob(jobs, "rings", 3).id, "mine");
  assert.equal(pickJob(jobs, "rings", 7).id, "theirs");
  assert.equal(pickJob(jobs, "rings", 9).id, "theirs", "no own run: the newest of the name");
  assert.equal(pickJob(jobs, "rings").id, "theirs");
  const mine = snapshot({ node_id: "3", created_at: 200 });
  assert.equal(acceptsSnapshot(mine, snapshot({ id: "fedcba9876543210", node_id: "7", created_at: 300 }), "rings", 3),
    false, "another node's newer run does not replace this node's own");
  assert.equal(acceptsSnapshot(mine, snapshot({ id: "fedcba9876543210", node_id: "3", created_at: 300 }), "rings", 3),
    true);
  assert.equal(acceptsSnapshot(snapshot({ node_id: "7" }), snapshot({ id: "fedcba9876543210", node_id: "3",
    created_at: 50 }), "rings", 3), true, "this node's own run replaces another node's, even an older one");
});

test("while running, the state says what the run is doing besides steps", () => {
  assert.equal(viewModel(snapshot({ phase: "encoding", phase_detail: "3/40" })).stateLabel, "training · encoding 3/40");
  assert.equal(viewModel(snapshot({ phase: "training" })).stateLabel, "training");
  assert.equal(viewModel(snapshot({ state: "done", phase: "evaluating" })).stateLabel, "done");
});

test("events: same job's news, or a newer job of the node's name, replace what is shown", () => {
  const shown = snapshot();
  assert.equal(acceptsSnapshot(null, shown, "rings"), true);
  assert.equal(acceptsSnapshot(shown, snapshot({ step: 13, updated_at: 111 }), "rings"), true);
  assert.equal(acceptsSnapshot(shown, snapshot({ step: 11, updated_at: 109 }), "rings"), false, "stale news");
  assert.equal(acceptsSnapshot(shown, snapshot({ id: "fedcba9876543210", created_at: 200 }), "rings"), true);
  assert.equal(acceptsSnapshot(shown, snapshot({ id: "fedcba9876543210", created_at: 50 }), "rings"), false);
  assert.equal(acceptsSnapshot(shown, snapshot({ name: "other" }), "rings"), false);
  assert.equal(acceptsSnapshot(null, snapshot(), ""), false);
  assert.equal(acceptsSnapshot(null, null, "rings"), false);
});

test("a running job's view: progress, steps, speed, ETA, losses, lr, memory; controls on", () => {
  const vm = viewModel(snapshot());
  assert.equal(vm.hasJob, true);
  assert.equal(vm.state, "running");
  assert.equal(vm.stateLabel, "training");
  assert.equal(vm.canControl, true);
  assert.equal(vm.progress, 0.25);
  assert.equal(vm.stepText, "12 / 48");
  assert.equal(vm.rate, "2.50 it/s");
  assert.equal(vm.eta, "14s");
  assert.equal(vm.loss, "0.1234");
  assert.equal(vm.smoothed, "0.15");
  assert.equal(vm.validation, MISSING);
  assert.equal(vm.lr, "1.00e-4");
  assert.equal(vm.memory, "3.00 GiB");
  assert.equal(vm.pending, "");
});

test("ended jobs: controls off, no ETA, the saved LoRA and any error shown", () => {
  for (const state of ["done", "stopped", "interrupted", "error", "queued"]) {
    const vm = viewModel(snapshot({ state, eta_seconds: null }));
    assert.equal(vm.canControl, false, state);
    assert.equal(vm.eta, MISSING, state);
  }
  const stopped = viewModel(snapshot({ state: "stopped", lora_name: "rings-step12.safetensors" }));
  assert.equal(stopped.stateLabel, "stopped");
  assert.equal(stopped.result, "saved rings-step12.safetensors");
  const failed = viewModel(snapshot({ state: "error", error: "out of memory" }));
  assert.equal(failed.stateLabel, "failed");
  assert.equal(failed.error, "out of memory");
  assert.equal(viewModel(snapshot({ state: "interrupted" })).stateLabel, "cancelled");
});

test("progress stays within 0..1 and pending requests are named", () => {
  assert.equal(viewModel(snapshot({ step: 60, total: 48 })).progress, 1);
  assert.equal(viewModel(snapshot({ step: 0 })).progress, 0);
  assert.equal(viewModel(snapshot({ pending_requests: ["sample", "stop"] })).pending, "requested: sample, stop & save");
  assert.equal(viewModel(snapshot({ validation_loss: 0.0875, validation_step: 40 })).validation, "0.0875 @ 40");
});

test("no job yet: a placeholder view with controls off", () => {
  const vm = viewModel(null, { name: "rings" });
  assert.equal(vm.hasJob, false);
  assert.equal(vm.canControl, false);
  assert.match(vm.stateLabel, /rings/);
  assert.deepEqual([vm.samples, vm.checkpoints], [[], []]);
  assert.equal(vm.stepText, MISSING);
});

test("samples group by step, newest first, with page-loadable URLs; checkpoints by step", () => {
  const url = (name) => `/loralab/jobs/0123456789abcdef/samples/${name}`;
  const vm = viewModel(snapshot({
    samples: [{ step: 10, name: "s10_0.png", label: "a ring", url: url("s10_0.png") },
      { step: 20, name: "s20_0.png", label: "", url: url("s20_0.png") },
      { step: 10, name: "s10_1.png", label: "b ring", url: url("s10_1.png") }],
    checkpoints: [{ step: 20, lora_name: "r-step20.safetensors" }, { step: 10, lora_name: "r-step10.safetensors" }],
  }), { resolveUrl: (u) => `/api${u}` });
  assert.deepEqual(vm.samples.map((g) => [g.step, g.items.map((i) => i.name)]),
    [[20, ["s20_0.png"]], [10, ["s10_0.png", "s10_1.png"]]]);
  assert.equal(vm.samples[1].items[0].src, `/api${url("s10_0.png")}`);
  assert.equal(vm.samples[0].items[0].label, "s20_0.png", "an empty label falls back to the file name");
  assert.deepEqual(vm.checkpoints.map((c) => c.step), [10, 20]);
  assert.deepEqual(sampleGroups(undefined), []);
});

test("a snapshot's own loss and validation become chart rows once there is a step", () => {
  assert.deepEqual(historyRow(snapshot()), [12, 0.1234, 0.15]);
  assert.equal(historyRow(snapshot({ step: 0 })), null);
  assert.equal(historyRow(snapshot({ loss: null })), null);
  assert.deepEqual(historyRow(snapshot({ smoothed_loss: null })), [12, 0.1234, null]);
  assert.equal(validationRow(snapshot()), null);
  assert.deepEqual(validationRow(snapshot({ validation_loss: 0.2, validation_step: 30 })), [30, 0.2]);
});

test("the view-model carries the effective batch of a data-parallel run only", () => {
  const batch = { batch_size: 1, grad_accumulation: 2, world_size: 4, effective: 8 };
  assert.equal(viewModel(snapshot({ world_size: 4, batch })).batch, "batch 1 x 2 accumulation x 4 processes = 8");
  assert.equal(viewModel(snapshot({ world_size: 1, batch: { ...batch, world_size: 1, effective: 2 } })).batch, "");
  assert.equal(viewModel(snapshot()).batch, "");
  assert.equal(viewModel(null).batch, "");
});

test("the view-model names how the run fits in memory, and what memory_mode auto chose", () => {
  const auto = "gradient checkpointing (auto): about 5.2 GiB with it, 9.1 GiB without, 6.0 GiB free";
  assert.equal(viewModel(snapshot({ memory_plan: auto })).memoryChoice, "gradient checkpointing (auto)");
  assert.equal(viewModel(snapshot({ memory_plan: auto })).memoryPlan, auto);
  const asSet = "full activations: about 1.1 GiB of 20.0 GiB free";
  assert.equal(viewModel(snapshot({ memory_plan: asSet })).memoryChoice, "");
  assert.equal(viewModel(snapshot({ memory_plan: asSet })).memoryPlan, asSet);
  assert.equal(viewModel(snapshot()).memoryPlan, "");
  assert.equal(viewModel(null).memoryChoice, "");
});
