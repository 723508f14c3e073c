// The playground: one page over the public API (REST for sandboxes, files and history; the
// /stream WebSocket to run code). No build step, no third-party code. Everything a sandbox
// produced is put in the page as text nodes, images as data: URLs, DataFrames as our own
// tables; text/html only ever goes into an <iframe sandbox> (no scripts, an opaque origin).
"use strict";

const KEY_STORAGE = "code-gateway-api-key";
const TABLE_MIMES = ["application/vnd.code-gateway.table+json", "application/json"];
const $ = (id) => document.getElementById(id);

const state = { socket: null, socketSandbox: "", cells: new Map(), next: 1, displays: new Map() };

function key() { return $("key").value.trim(); }

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "status-failed" : "";
}

async function api(method, path, body, headers) {
  const response = await fetch(path, {
    method, body, headers: { Authorization: `Bearer ${key()}`, ...(headers || {}) },
  });
  if (!response.ok) {
    let message = `${response.status}`;
    try {
      const error = (await response.json()).error;
      message = `${response.status} ${error.code}: ${error.message}`;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function json(method, path, body) {
  const response = await api(method, path, body === undefined ? undefined : JSON.stringify(body),
    body === undefined ? {} : { "Content-Type": "application/json" });
  return response.status === 204 ? null : response.json();
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function stripAnsi(text) { return text.replace(/\x1b\[[0-9;]*[A-Za-z]/g, ""); }

function joined(value) { return Array.isArray(value) ? value.join("") : String(value); }

// -- rendering outputs -------------------------------------------------------------------------

function tableOf(data) {
  for (const mime of TABLE_MIMES) {
    const value = data[mime];
    if (value && typeof value === "object" && Array.isArray(value.rows) && Array.isArray(value.columns)) return value;
  }
  return null;
}

function renderTable(table) {
  const node = element("table", "frame");
  const head = node.createTHead().insertRow();
  head.appendChild(element("th", "", ""));
  for (const column of table.columns) head.appendChild(element("th", "", String(column)));
  const body = node.createTBody();
  table.rows.forEach((row, i) => {
    const tr = body.insertRow();
    tr.appendChild(element("th", "", String((table.index || [])[i] ?? i)));
    for (const value of row) tr.appendChild(element("td", "", value === null ? "" : String(value)));
  });
  if (table.truncated) {
    const wrap = element("div");
    wrap.append(node, element("div", "meta", `first ${table.rows.length} of ${table.row_count} rows`));
    return wrap;
  }
  return node;
}

function image(mime, base64) {
  const img = element("img");
  img.alt = mime;
  img.src = `data:${mime};base64,${base64.replace(/\s/g, "")}`;
  return img;
}

function utf8Base64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  bytes.forEach((b) => { binary += String.fromCharCode(b); });
  return btoa(binary);
}

function htmlFrame(html) {
  // sandbox="" : no scripts, no forms, no top navigation, an opaque origin. The page's CSP
  // applies inside too (srcdoc frames inherit it).
  const frame = element("iframe", "html-output");
  frame.setAttribute("sandbox", "");
  frame.setAttribute("referrerpolicy", "no-referrer");
  frame.title = "HTML output (sandboxed)";
  frame.srcdoc = html;
  return frame;
}

// A small Markdown subset (headings, paragraphs, lists, code, emphasis, links), built as DOM nodes.
function inline(parent, text) {
  const pattern = /(`[^`]+`|\*\*[^*]+\*\*|\*[^*]+\*|\[[^\]]+\]\([^)\s]+\))/g;
  let last = 0;
  for (const match of text.matchAll(pattern)) {
    parent.append(text.slice(last, match.index));
    const token = match[0];
    if (token.startsWith("`")) parent.appendChild(element("code", "", token.slice(1, -1)));
    else if (token.startsWith("**")) parent.appendChild(element("strong", "", token.slice(2, -2)));
    else if (token.startsWith("*")) parent.appendChild(element("em", "", token.slice(1, -1)));
    else {
      const [, label, href] = token.match(/^\[([^\]]+)\]\(([^)\s]+)\)$/);
      if (/^https?:\/\//.test(href)) {
        const a = element("a", "", label);
        a.href = href;
        a.rel = "noopener noreferrer";
        a.target = "_blank";
        parent.appendChild(a);
      } else parent.append(label);
    }
    last = match.index + token.length;
  }
  parent.append(text.slice(last));
}

function markdown(text) {
  const root = element("div", "markdown");
  let list = null;
  let code = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("```")) {
      if (code) { code = null; } else { code = element("pre", "text"); root.appendChild(code); }
      continue;
    }
    if (code) { code.textContent += line + "\n"; continue; }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*[-*]\s+(.*)$/);
    if (!item) list = null;
    if (heading) { const h = element(`h${heading[1].length}`); inline(h, heading[2]); root.appendChild(h); }
    else if (item) {
      if (!list) { list = element("ul"); root.appendChild(list); }
      const li = element("li"); inline(li, item[1]); list.appendChild(li);
    } else if (line.trim()) { const p = element("p"); inline(p, line); root.appendChild(p); }
  }
  return root;
}

function renderOutput(output) {
  const box = element("div", "output");
  if (output.output_type === "stream") {
    box.appendChild(element("pre", `stream ${output.name}`, joined(output.text)));
    return box;
  }
  if (output.output_type === "error") {
    box.appendChild(element("pre", "error", stripAnsi((output.traceback || [`${output.ename}: ${output.evalue}`]).join("\n"))));
    return box;
  }
  const data = output.data || {};
  const table = tableOf(data);
  if (table) box.appendChild(renderTable(table));
  else if (data["image/png"]) box.appendChild(image("image/png", joined(data["image/png"])));
  else if (data["image/jpeg"]) box.appendChild(image("image/jpeg", joined(data["image/jpeg"])));
  else if (data["image/svg+xml"]) box.appendChild(image("image/svg+xml", utf8Base64(joined(data["image/svg+xml"]))));
  else if (data["text/markdown"]) box.appendChild(markdown(joined(data["text/markdown"])));
  else if (data["text/html"]) box.appendChild(htmlFrame(joined(data["text/html"])));
  else if (data["text/plain"] !== undefined) box.appendChild(element("pre", "text", joined(data["text/plain"])));
  return box;
}

function appendOutput(cell, output, displayId) {
  const last = cell.outputs.lastElementChild;
  const pre = last && last.firstElementChild;
  if (output.output_type === "stream" && pre && pre.classList.contains("stream") && pre.classList.contains(output.name)) {
    pre.textContent += joined(output.text);  // consecutive chunks of one stream join, as in a notebook
    return;
  }
  const node = renderOutput(output);
  cell.outputs.appendChild(node);
  if (displayId) {
    if (!state.displays.has(displayId)) state.displays.set(displayId, []);
    state.displays.get(displayId).push(node);
  }
}

// -- cells -------------------------------------------------------------------------------------

function newCell(code, label) {
  const cell = { root: element("div", "cell"), outputs: element("div", "outputs"), meta: element("div", "meta", label) };
  cell.root.append(element("pre", "source", code), cell.meta, cell.outputs);
  $("cells").prepend(cell.root);
  return cell;
}

function finish(cell, execution) {
  const took = execution.duration_ms == null ? "" : ` in ${Math.round(execution.duration_ms)} ms`;
  cell.meta.textContent = `[${execution.execution_count ?? " "}] ${execution.status}${took}`;
  cell.meta.className = `meta status-${execution.status}`;
  if (execution.error && execution.error.code !== "exception") {
    const why = execution.error.evalue ? `: ${execution.error.evalue}` : "";
    cell.outputs.appendChild(element("pre", "error", `${execution.error.code}${why}`));
  }
}

function showExecution(execution) {
  const cell = newCell(execution.code, "");
  for (const output of execution.outputs) appendOutput(cell, output);
  finish(cell, execution);
}

// -- the socket --------------------------------------------------------------------------------

function socketFor(sandboxId) {
  if (state.socket && state.socketSandbox === sandboxId && state.socket.readyState <= WebSocket.OPEN) {
    return Promise.resolve(state.socket);
  }
  if (state.socket) state.socket.close();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/api/v1/sandboxes/${encodeURIComponent(sandboxId)}/stream`
    + `?token=${encodeURIComponent(key())}`);
  state.socket = socket;
  state.socketSandbox = sandboxId;
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = () => { if (state.socket === socket) state.socket = null; };
  return new Promise((resolve, reject) => {
    socket.onopen = () => resolve(socket);
    socket.onerror = () => reject(new Error("the stream could not be opened (key or sandbox?)"));
  });
}

function onEvent(event) {
  const cell = state.cells.get(event.id);
  if (!cell) return;
  if (event.type === "accepted") cell.meta.textContent = "running…";
  else if (event.type === "output") appendOutput(cell, event.output, event.display_id);
  else if (event.type === "clear_output") cell.outputs.replaceChildren();
  else if (event.type === "update_display") {
    for (const node of state.displays.get(event.display_id) || []) node.replaceChildren(...renderOutput(event.output).childNodes);
  } else if (event.type === "execution") {
    finish(cell, event.execution);
    state.cells.delete(event.id);
    $("run-state").textContent = "";
    refreshHistory();
    refreshFiles();
  } else if (event.type === "error") {
    cell.meta.textContent = `${event.error.code}: ${event.error.message}`;
    cell.meta.className = "meta status-failed";
    state.cells.delete(event.id);
  }
}

async function run() {
  const sandboxId = $("sandbox").value;
  if (!sandboxId) { status("pick or create a sandbox first", true); return; }
  const code = $("code").value;
  try {
    const socket = await socketFor(sandboxId);
    const id = `c${state.next++}`;
    state.cells.set(id, newCell(code, "queued"));
    socket.send(JSON.stringify({ type: "execute", id, code }));
    $("run-state").textContent = "running";
  } catch (error) { status(error.message, true); }
}

async function interrupt() {
  const sandboxId = $("sandbox").value;
  if (!sandboxId) return;
  try { await json("POST", `/api/v1/sandboxes/${encodeURIComponent(sandboxId)}/interrupt`); status("interrupted"); }
  catch (error) { status(error.message, true); }
}

// -- sandboxes, files, history ------------------------------------------------------------------

function sandboxPath() { return `/api/v1/sandboxes/${encodeURIComponent($("sandbox").value)}`; }

async function refreshSandboxes(select) {
  if (!key()) { status("enter an API key"); return; }
  try {
    const { sandboxes } = await json("GET", "/api/v1/sandboxes?status=running");
    const picker = $("sandbox");
    const keep = select || picker.value;
    picker.replaceChildren(element("option", "", "(none)"));
    picker.firstChild.value = "";
    for (const sandbox of sandboxes) {
      const option = element("option", "", `${sandbox.id.slice(0, 8)} · ${sandbox.execution_count} runs`);
      option.value = sandbox.id;
      picker.appendChild(option);
    }
    picker.value = sandboxes.some((s) => s.id === keep) ? keep : "";
    status(`${sandboxes.length} running sandboxes`);
    await selected();
  } catch (error) { status(error.message, true); }
}

async function createSandbox() {
  try {
    status("starting a sandbox…");
    const sandbox = await json("POST", "/api/v1/sandboxes", {});
    await refreshSandboxes(sandbox.id);
    status(`sandbox ${sandbox.id.slice(0, 8)} is ${sandbox.status}`);
  } catch (error) { status(error.message, true); }
}

async function selected() {
  $("cells").replaceChildren();
  await Promise.all([refreshHistory(), refreshFiles()]);
}

// The lists are replaced whole once their answer is in, and only by the latest refresh: two
// refreshes at once (an execution ending while an upload finishes) would each clear the list
// and then both append to it.
const refreshes = { history: 0, files: 0 };

async function refreshList(name, fetchItems) {
  const generation = ++refreshes[name];
  let items = [];
  try {
    if ($("sandbox").value) items = await fetchItems();
  } catch (error) { status(error.message, true); }
  if (generation === refreshes[name]) $(name).replaceChildren(...items);
}

async function refreshHistory() {
  await refreshList("history", async () => {
    const { executions } = await json("GET", `${sandboxPath()}/executions?limit=1000`);
    return executions.map((execution) => {
      const item = element("li", `status-${execution.status}`, `${execution.code.split("\n")[0].slice(0, 48)} — ${execution.status}`);
      item.title = "show this execution and put its code in the editor";
      item.addEventListener("click", () => { $("code").value = execution.code; showExecution(execution); });
      return item;
    });
  });
}

async function refreshFiles() {
  await refreshList("files", async () => {
    const { entries } = await json("GET", `${sandboxPath()}/files`);
    return entries.map((entry) => {
      const item = element("li", "", `${entry.name} (${entry.type === "file" ? `${entry.size} B` : entry.type})`);
      if (entry.type === "file") {
        const button = element("button", "", "download");
        button.addEventListener("click", () => download(`${sandboxPath()}/files/${entry.path.split("/").map(encodeURIComponent).join("/")}`, entry.name));
        item.appendChild(button);
      }
      return item;
    });
  });
}

async function download(path, name) {
  try {
    const blob = await (await api("GET", path)).blob();
    const url = URL.createObjectURL(blob);
    const a = element("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) { status(error.message, true); }
}

async function upload(files) {
  for (const file of files) {
    try {
      status(`uploading ${file.name}…`);
      await api("PUT", `${sandboxPath()}/files/${encodeURIComponent(file.name)}`, file);
      status(`uploaded ${file.name}`);
    } catch (error) { status(error.message, true); }
  }
  $("upload").value = "";
  await refreshFiles();
}

// -- wiring ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("key").value = sessionStorage.getItem(KEY_STORAGE) || "";
  $("key").addEventListener("change", () => { sessionStorage.setItem(KEY_STORAGE, key()); refreshSandboxes(); });
  $("sandbox").addEventListener("change", () => selected());
  $("new-sandbox").addEventListener("click", createSandbox);
  $("refresh").addEventListener("click", () => refreshSandboxes());
  $("run").addEventListener("click", run);
  $("interrupt").addEventListener("click", interrupt);
  $("notebook").addEventListener("click", () => {
    if ($("sandbox").value) download(`${sandboxPath()}/notebook`, `sandbox-${$("sandbox").value}.ipynb`);
  });
  $("upload").addEventListener("change", (event) => upload(event.target.files));
  $("code").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
  if (key()) refreshSandboxes();
});
