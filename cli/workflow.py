"""A saved workflow as the API graph the graph editor would queue: UI format (as the editor saves it) -> API format.

The editor's own conversion (`graphToPrompt`) is followed: a node's `widgets_values` are its widget inputs in
INPUT_TYPES order (required, then optional), where an INT or COMBO with `control_after_generate` (and every INT
named `seed` / `noise_seed`) stores one more value after its own (`fixed`, `randomize`...) and an upload combo
one more (the upload button); inputs declared `forceInput` and socket types have no widget. A link replaces the
widget's value with `[origin_id, slot]`. Notes, primitives and reroutes are not nodes of the graph: a primitive's
value is already the target widget's value, a reroute passes its own input through. Muted nodes are left out;
a bypassed node passes each output on from its input of the same type, as the editor does.

Pure: the node classes' input declarations come in through a callable, so this module never imports the host.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

InputTypes = Callable[[str], Mapping[str, Any] | None]  # class_type -> INPUT_TYPES() (or /object_info "input")

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
SEED_NAMES = ("seed", "noise_seed")  # the editor adds a control widget to these INTs unasked
NOT_NODES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})  # editor-only, never queued
MODE_MUTED, MODE_BYPASSED = 2, 4


class WorkflowError(ValueError):
    """A workflow that cannot be run as saved; the message names the node as the editor shows it."""


def is_ui_format(workflow: Mapping[str, Any]) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def is_api_format(workflow: Mapping[str, Any]) -> bool:
    return bool(workflow) and all(isinstance(n, Mapping) and "class_type" in n for n in workflow.values())


def node_label(node_id: str, class_type: str, title: str | None = None) -> str:
    """`#4 'My trainer' (LoraLabTrainLora)`: how errors name a workflow's node."""
    return f"#{node_id} '{title}' ({class_type})" if title and title != class_type else f"#{node_id} ({class_type})"


def widget_value_count(name: str, spec: Any) -> int:
    """How many entries of `widgets_values` the input `name` declared as `spec` ((type, options)) takes: 0-3."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
    if options.get("forceInput") or not (is_combo or kind in WIDGET_TYPES):
        return 0
    count = 1
    if options.get("control_after_generate") or (kind == "INT" and name in SEED_NAMES):
        count += 1
    if is_combo and any(options.get(o) for o in UPLOAD_OPTIONS):
        count += 1
    return count


def widget_default(spec: Any) -> Any:
    """The value a new widget shows: the declared default, else the first choice, else the type's zero."""
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    if "default" in options:
        return options["default"]
    if isinstance(kind, (list, tuple)):
        return kind[0] if kind else None
    if kind == "COMBO":
        choices = options.get("options") or []
        return choices[0] if choices else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def declared_inputs(input_types: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, spec) of every required then optional input, in declaration order (the widgets' order)."""
    return [(name, spec) for section in ("required", "optional")
            for name, spec in (input_types.get(section) or {}).items()]


def _links(workflow: Mapping[str, Any]) -> dict[int, tuple[int, int, str]]:
    """link id -> (origin node id, origin slot, type); both the list form and the newer object form."""
    links = {}
    for link in workflow.get("links") or []:
        if isinstance(link, Mapping):
            links[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]), str(link.get("type")))
        else:
            link_id, origin, slot, _target, _target_slot, kind = link[:6]
            links[int(link_id)] = (int(origin), int(slot), str(kind))
    return links


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], input_types: InputTypes,
                 display_names: Mapping[str, str]) -> None:
        self.nodes = {int(n["id"]): n for n in workflow["nodes"]}
        self.links = _links(workflow)
        self.input_types = input_types
        self.display_names = display_names

    def label(self, node: Mapping[str, Any]) -> str:
        return node_label(str(node["id"]), node["type"], node.get("title"))

    def convert(self) -> dict[str, dict[str, Any]]:
        prompt = {}
        for node_id, node in sorted(self.nodes.items()):
            kind = node["type"]
            if kind in NOT_NODES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
                continue
            prompt[str(node_id)] = self.node_entry(node)
        return prompt

    def declared(self, node: Mapping[str, Any]) -> Mapping[str, Any]:
        kind = node["type"]
        declared = self.input_types(kind)
        if declared is not None:
            return declared
        if kind.startswith("workflow>") or kind.startswith("workflow/"):
            raise WorkflowError(f"node {self.label(node)} is a group node; convert it back to its nodes in the "
                                "editor, or export the workflow in API format (Export (API)) and run that file")
        raise WorkflowError(f"node {self.label(node)} has the type '{kind}', which this ComfyUI does not know: "
                            "install the custom node pack that provides it into custom_nodes/, or remove the node")

    def node_entry(self, node: Mapping[str, Any]) -> dict[str, Any]:
        inputs = self.widget_inputs(node)
        for slot in node.get("inputs") or []:
            name = (slot.get("widget") or {}).get("name") or slot["name"]
            if slot.get("link") is None:
                continue
            source = self.source(slot["link"], node, name)
            if source is _NO_INPUT:
                inputs.pop(name, None)
            elif source is not _WIDGET_VALUE:
                inputs[name] = source
        title = node.get("title") or self.display_names.get(node["type"], node["type"])
        return {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}

    def widget_inputs(self, node: Mapping[str, Any]) -> dict[str, Any]:
        declared = declared_inputs(self.declared(node))
        saved = node.get("widgets_values")
        if isinstance(saved, Mapping):  # some nodes save their widgets by name
            return {name: _api_value(saved[name]) for name, spec in declared
                    if widget_value_count(name, spec) and name in saved}
        saved = list(saved or [])
        inputs, position, defaulted = {}, 0, []
        for name, spec in declared:
            count = widget_value_count(name, spec)
            if not count:
                continue
            if position < len(saved):
                inputs[name] = _api_value(saved[position])
            else:  # saved before this input existed: the editor shows the default
                inputs[name] = _api_value(widget_default(spec))
                defaulted.append(name)
            position += count
        if position < len(saved):
            raise WorkflowError(
                f"node {self.label(node)} saved {len(saved)} widget values but its inputs here take {position}: "
                "the workflow was saved with another version of the node. Open and save it in the editor, or "
                "export it in API format (Export (API)) and run that file")
        if defaulted:
            log.info("node %s: %s not saved in the workflow, at the default as in the editor",
                     self.label(node), ", ".join(defaulted))
        return inputs

    def source(self, link_id: int, target: Mapping[str, Any], input_name: str, depth: int = 0) -> Any:
        """What a linked input receives: [origin_id, slot], _WIDGET_VALUE (a primitive) or _NO_INPUT (muted)."""
        if link_id not in self.links:
            raise WorkflowError(f"node {self.label(target)}: input '{input_name}' uses link {link_id}, "
                                "which the workflow does not list")
        if depth > len(self.nodes):
            raise WorkflowError(f"node {self.label(target)}: input '{input_name}' loops through reroutes")
        origin_id, slot, kind = self.links[link_id]
        origin = self.nodes.get(origin_id)
        if origin is None:
            raise WorkflowError(f"node {self.label(target)}: input '{input_name}' is linked to node #{origin_id}, "
                                "which the workflow does not have")
        mode = origin.get("mode", 0)
        if origin["type"] == "PrimitiveNode":
            return _WIDGET_VALUE
        if origin["type"] == "Reroute" or mode == MODE_BYPASSED:
            upstream = self.pass_through(origin, slot, kind)
            return _NO_INPUT if upstream is None else self.source(upstream, target, input_name, depth + 1)
        if mode == MODE_MUTED:
            return _NO_INPUT
        return [str(origin_id), slot]

    def pass_through(self, node: Mapping[str, Any], slot: int, kind: str) -> int | None:
        """The link a reroute or a bypassed node passes on to output `slot` of type `kind`: the input at the
        same index if its type matches, else the first input of that type."""
        inputs = [i for i in node.get("inputs") or [] if i.get("link") is not None]
        if node["type"] == "Reroute":
            return inputs[0]["link"] if inputs else None
        slots = node.get("inputs") or []
        if slot < len(slots) and slots[slot].get("link") is not None and slots[slot].get("type") == kind:
            return slots[slot]["link"]
        return next((i["link"] for i in inputs if i.get("type") == kind), None)


_WIDGET_VALUE = object()
_NO_INPUT = object()


def _api_value(value: Any) -> Any:
    """Widget values that are lists travel wrapped, so the host does not read them as links."""
    return {"__value__": value} if isinstance(value, list) else value


def ui_to_api(workflow: Mapping[str, Any], input_types: InputTypes,
              display_names: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """The API graph the editor queues for this UI-format workflow (every node it would send)."""
    if (workflow.get("definitions") or {}).get("subgraphs"):
        raise WorkflowError("the workflow uses subgraphs, which this converter does not unpack; export it in "
                            "API format from the editor (Export (API)) and run that file")
    return _Converter(workflow, input_types, display_names or {}).convert()


def set_input(prompt: dict[str, dict[str, Any]], assignment: str) -> None:
    """Applies `--set ID.INPUT=VALUE` (VALUE read as JSON when it parses, else as text) to an API graph."""
    target, sep, raw = assignment.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowError(f"--set {assignment!r}: write NODE_ID.INPUT=VALUE, e.g. --set 4.steps=100")
    if node_id not in prompt:
        raise WorkflowError(f"--set {assignment!r}: the workflow has no node #{node_id} "
                            f"(it has {', '.join('#' + i for i in prompt)})")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    prompt[node_id]["inputs"][name] = value


def nodes_needed(prompt: Mapping[str, Mapping[str, Any]], node_id: str) -> dict[str, dict[str, Any]]:
    """The API graph of `node_id` and every node its inputs link to, directly or not (copies, in `prompt`'s order)."""
    needed, pending = set(), [str(node_id)]
    while pending:
        current = pending.pop()
        if current in needed or current not in prompt:
            continue
        needed.add(current)
        pending += [str(v[0]) for v in prompt[current]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {i: json.loads(json.dumps(node)) for i, node in prompt.items() if i in needed}


def runnable_nodes(workflow: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The nodes that would be queued, by type and title only: enough to pick the Train LoRA node before the
    host (and every node class) is loaded."""
    if not is_ui_format(workflow):
        return dict(workflow)
    return {str(n["id"]): {"class_type": n["type"], "_meta": {"title": n.get("title")}} for n in workflow["nodes"]
            if n["type"] not in NOT_NODES and n.get("mode", 0) not in (MODE_MUTED, MODE_BYPASSED)}


def train_lora_node(prompt: Mapping[str, Mapping[str, Any]], chosen: str | None,
                    class_type: str = "LoraLabTrainLora") -> str:
    """The id of the Train LoRA node to run: the only one, or `chosen` (--node)."""
    def label(node_id: str) -> str:
        node = prompt[node_id]
        return node_label(node_id, node["class_type"], (node.get("_meta") or {}).get("title"))

    found = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    if chosen is not None:
        chosen = chosen.lstrip("#")
        if chosen in found:
            return chosen
        listed = ", ".join(label(i) for i in found) or "none"
        if chosen not in prompt:
            raise WorkflowError(f"--node {chosen}: the workflow has no node #{chosen}; its Train LoRA nodes: {listed}")
        raise WorkflowError(f"--node {chosen}: node {label(chosen)} is not a Train LoRA node; its Train LoRA "
                            f"nodes: {listed}")
    if not found:
        raise WorkflowError(f"the workflow has no Train LoRA node ({class_type}) that runs: add one in the editor "
                            "(LoRA Lab > Train LoRA), or un-mute / un-bypass it")
    if len(found) > 1:
        raise WorkflowError(f"the workflow has {len(found)} Train LoRA nodes: {', '.join(label(i) for i in found)}; "
                            f"choose one with --node, e.g. --node {found[0]}")
    return found[0]
