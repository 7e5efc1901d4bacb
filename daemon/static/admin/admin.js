// The admin console: plain JavaScript, no build step, no CDN. Every call goes to the admin API
// with the bearer token the user entered once (kept in this tab's sessionStorage only).
"use strict";

const TEXT = {
  zh: {
    title: "CRM 集成管理", token: "管理令牌 (ADMIN_TOKEN)", signIn: "进入", signOut: "退出",
    tokenHint: "令牌只保存在本标签页的 sessionStorage 中。", badToken: "令牌无效",
    pick: "选择CRM系统", settingsOf: "配置", id: "集成 ID", name: "名称", enabled: "启用", type: "类型",
    test: "测试连接", dryRun: "试运行", save: "保存", status: "同步状态", delivered: "已送达", failed: "失败",
    pending: "待处理", circuit: "熔断", lastSuccess: "最近成功", lastError: "最近错误", refreshed: "自动刷新，更新于",
    testing: "正在测试…", testOk: "连接成功", testFail: "连接失败", notTestable: "无法测试",
    saving: "正在保存…", saved: "已保存，版本", saveFail: "保存失败", readOnly: "配置文件只读",
    secretKept: "已保存（留空则不变）", jsonHint: "JSON", listHint: "以逗号分隔", version: "配置版本",
    invalidJson: "不是有效的 JSON", none: "—", routes: "路由", advanced: "高级设置",
  },
  en: {
    title: "CRM integrations", token: "Admin token (ADMIN_TOKEN)", signIn: "Sign in", signOut: "Sign out",
    tokenHint: "The token is kept in this tab's sessionStorage only.", badToken: "Wrong token",
    pick: "Choose a CRM", settingsOf: "Settings:", id: "Integration id", name: "Name", enabled: "Enabled", type: "Type",
    test: "Test connection", dryRun: "Dry run", save: "Save", status: "Sync status", delivered: "Delivered",
    failed: "Failed", pending: "Pending", circuit: "Circuit", lastSuccess: "Last success", lastError: "Last error",
    refreshed: "Refreshes itself; updated", testing: "Testing…", testOk: "Connected", testFail: "Connection failed",
    notTestable: "Not testable", saving: "Saving…", saved: "Saved, version", saveFail: "Not saved",
    readOnly: "The configuration file is read-only", secretKept: "stored (leave empty to keep)", jsonHint: "JSON",
    listHint: "comma-separated", version: "config version", invalidJson: "is not valid JSON", none: "—", routes: "routes", advanced: "Advanced settings",
  },
};

const state = { lang: null, supported: [], selected: null, schema: null, integrations: [], timer: null };
const $ = (sel) => document.querySelector(sel);

function lang() {
  if (!state.lang) {
    const stored = sessionStorage.getItem("octopus-admin-lang");
    state.lang = stored || ((navigator.language || "zh").toLowerCase().startsWith("zh") ? "zh" : "en");
  }
  return state.lang;
}
const t = (key) => TEXT[lang()][key] || key;

function applyLanguage() {
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  $("#lang").textContent = lang() === "zh" ? "English" : "中文";
  document.title = t("title");
}

function token() { return sessionStorage.getItem("octopus-admin-token") || ""; }
const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

async function api(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  return { status: resp.status, data, headers: resp.headers };
}

// -- login ------------------------------------------------------------------------------------

async function start() {
  applyLanguage();
  $("#lang").addEventListener("click", () => {
    state.lang = lang() === "zh" ? "en" : "zh";
    sessionStorage.setItem("octopus-admin-lang", state.lang);
    applyLanguage();
    renderGrid();  // the form keeps what was typed; its field notes are the schema's own words
    if (state.selected) $("#editor-title").textContent = lang() === "zh" ? state.selected.nameZh : state.selected.name;
    refreshStatus();
  });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem("octopus-admin-token"); location.reload(); });
  $("#login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("octopus-admin-token", $("#token").value.trim());
    $("#token").value = "";
    await enter();
  });
  await enter();
}

async function enter() {
  const answer = await api("GET", "/api/crm/supported");  // without a configured token: loopback, no login
  if (answer.status !== 200) {
    if (token()) $("#login-error").textContent = t("badToken");
    sessionStorage.removeItem("octopus-admin-token");
    $("#login").hidden = false;
    $("#app").hidden = true;
    return;
  }
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  state.supported = answer.data;
  renderGrid();
  await refreshStatus();
  state.timer = setInterval(refreshStatus, 2000);
}

// -- the grid ---------------------------------------------------------------------------------

function renderGrid() {
  const grid = $("#grid");
  grid.replaceChildren();
  for (const crm of state.supported) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "crm-card" + (state.selected && state.selected.type === crm.type ? " selected" : "");
    card.dataset.type = crm.type;
    card.setAttribute("role", "option");
    const logo = document.createElement("span");
    logo.className = "logo";
    logo.textContent = crm.name.slice(0, 1).toUpperCase();
    const zh = document.createElement("span");
    zh.className = "zh";
    zh.textContent = crm.nameZh;
    const en = document.createElement("span");
    en.className = "en";
    en.textContent = crm.name;
    card.append(logo, zh, en);
    card.addEventListener("click", () => select(crm.type));
    grid.append(card);
  }
}

function select(type) {
  state.selected = state.supported.find((c) => c.type === type);
  state.schema = state.selected.settings || { type: "object", properties: {} };
  const existing = state.integrations.find((i) => i.type === type);
  $("#f-id").value = existing ? existing.id : "";
  $("#f-name").value = existing ? existing.name || "" : "";
  renderGrid();
  renderForm(existing);
  $("#editor").hidden = false;
  $("#result").hidden = true;
  $("#dry-result").hidden = true;
}

// -- the form, generated from the vendor's JSON Schema ------------------------------------------

function deref(schema) {
  if (schema && schema.$ref) return deref(state.schema.$defs[schema.$ref.split("/").pop()]);
  if (schema && schema.anyOf) {
    const branch = schema.anyOf.find((s) => s.type !== "null");
    return { ...deref(branch), description: schema.description, default: schema.default, title: schema.title };
  }
  return schema || {};
}

function kindOf(schema) {
  if (schema.enum) return "enum";
  if (schema.writeOnly || schema.format === "password") return "secret";
  if (schema.type === "boolean") return "boolean";
  if (schema.type === "number" || schema.type === "integer") return "number";
  if (schema.type === "array" && schema.items && schema.items.type === "string") return "list";
  if (schema.type === "object" && schema.properties && schema.additionalProperties === false) return "object";
  if (schema.type === "object") return "json";
  return "text";
}

function renderForm(existing) {
  const holder = $("#fields");
  holder.replaceChildren();
  $("#editor-title").textContent = lang() === "zh" ? state.selected.nameZh : state.selected.name;
  const current = existing ? existing.config || {} : {};
  const props = state.schema.properties || {};
  const primary = ["authType", "credentials", "endpoints", "mappings"];
  const required = new Set(state.schema.required || []);
  const keys = [...primary.filter((k) => k in props), ...Object.keys(props).filter((k) => !primary.includes(k))];
  const advanced = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = t("advanced");
  advanced.append(summary);
  for (const key of keys) {
    const schema = deref(props[key]);
    const target = primary.includes(key) || required.has(key) ? holder : advanced;
    if (kindOf(schema) === "object") target.append(objectFieldset(key, schema, current[key] || {}));
    else target.append(field(key, key, schema, current[key]));
  }
  if (advanced.children.length > 1) holder.append(advanced);
}

function objectFieldset(key, schema, values) {
  const set = document.createElement("fieldset");
  const legend = document.createElement("legend");
  legend.textContent = key;
  set.append(legend);
  for (const [name, sub] of Object.entries(schema.properties)) {
    set.append(field(`${key}.${name}`, name, deref(sub), Array.isArray(values) ? undefined : values[name]));
  }
  return set;
}

function field(path, name, schema, value) {
  const kind = kindOf(schema);
  const label = document.createElement("label");
  if (kind === "boolean") label.className = "check";
  const caption = document.createElement("span");
  caption.textContent = name + (schema.description ? ` — ${schema.description}` : "");
  let input;
  if (kind === "enum") {
    input = document.createElement("select");
    for (const option of ["", ...schema.enum]) {
      const el = document.createElement("option");
      el.value = option;
      el.textContent = option || t("none");
      input.append(el);
    }
    input.value = value || "";
  } else if (kind === "json") {
    input = document.createElement("textarea");
    input.placeholder = t("jsonHint");
    if (value && Object.keys(value).length) input.value = JSON.stringify(value, null, 2);
  } else {
    input = document.createElement("input");
    if (kind === "secret") {
      input.type = "password";
      input.autocomplete = "new-password";
      if (value) input.placeholder = t("secretKept");  // the API answers names only: never the value
    } else if (kind === "boolean") {
      input.type = "checkbox";
      input.checked = value === undefined ? schema.default === true : value === true || value === "true";
      input.dataset.default = String(schema.default === true);
    } else if (kind === "number") {
      input.type = "number";
      input.step = "any";
      if (value !== undefined && value !== null) input.value = value;
    } else {
      input.type = kind === "text" && schema.format === "uri" ? "url" : "text";
      if (kind === "list") input.placeholder = t("listHint");
      if (value !== undefined && value !== null && typeof value !== "object") input.value = value;
      if (Array.isArray(value)) input.value = value.join(", ");
    }
  }
  input.name = path;
  input.dataset.kind = kind;
  if (kind === "boolean") label.append(input, caption);
  else label.append(caption, input);
  return label;
}

function collect() {
  const config = {};
  for (const input of document.querySelectorAll("#fields [name]")) {
    const kind = input.dataset.kind;
    let value;
    if (kind === "boolean") value = String(input.checked) === input.dataset.default ? undefined : input.checked;
    else if (input.value.trim() === "") value = undefined;
    else if (kind === "number") value = Number(input.value);
    else if (kind === "list") value = input.value.split(",").map((s) => s.trim()).filter(Boolean);
    else if (kind === "json") {
      try { value = JSON.parse(input.value); } catch (_) { throw new Error(`${input.name} ${t("invalidJson")}`); }
    } else value = input.value.trim();
    if (value === undefined) continue;
    const parts = input.name.split(".");
    let node = config;
    for (const part of parts.slice(0, -1)) node = node[part] = node[part] || {};
    node[parts[parts.length - 1]] = value;
  }
  const body = { type: state.selected.type, config, enabled: $("#f-enabled").checked };
  if ($("#f-id").value.trim()) body.id = $("#f-id").value.trim();
  if ($("#f-name").value.trim()) body.name = $("#f-name").value.trim();
  return body;
}

function show(ok, text) {
  const box = $("#result");
  box.hidden = false;
  box.className = "result " + (ok === null ? "" : ok ? "ok" : "bad");
  box.textContent = text;
}

function describeError(data) {
  if (!data) return "";
  if (data.errors && data.errors.length) return data.errors.map((e) => `${e.path || "<root>"}: ${e.message}`).join("\n");
  if (data.error && typeof data.error === "object") return `${data.error.class}/${data.error.code}: ${data.error.message}`;
  return data.reason || data.error || "";
}

async function withButton(id, fn) {
  const button = $(id);
  button.disabled = true;
  try { await fn(); } catch (err) { show(false, err.message); } finally { button.disabled = false; }
}

async function testConnection() {
  const body = collect();
  show(null, t("testing"));
  const { status, data } = await api("POST", "/api/crm/test-connection", body);
  if (status === 200 && data.success) show(true, `${t("testOk")} (${Math.round(data.latencyMs)} ms)`);
  else if (status === 200 && data.tested === false) show(false, `${t("notTestable")}: ${data.reason}`);
  else show(false, `${t("testFail")} — ${describeError(data)}`);
}

async function save(dryRun) {
  const body = { ...collect(), dryRun };
  if (!dryRun) {
    show(null, t("saving"));
    $("#dry-result").hidden = true;
  }
  const { status, data } = await api("POST", "/api/crm/configure", body);
  if (status === 200 && dryRun) {
    $("#dry-result").hidden = false;
    $("#dry-result").textContent = JSON.stringify(data.results, null, 2);
    return;
  }
  if (status === 200) {
    $("#f-id").value = data.integrationId;
    show(true, `${t("saved")} ${data.version} (${data.integrationId})`);
  } else if (status === 409) {
    show(false, `${t("readOnly")} — ${data.reason}`);
  } else {
    show(false, `${t("saveFail")} — ${describeError(data)}`);
  }
  await refreshStatus();
}

// -- status -----------------------------------------------------------------------------------

async function refreshStatus() {
  const listed = await api("GET", "/api/crm/integrations");
  if (listed.status !== 200) return;
  state.integrations = listed.data;
  $("#version").textContent = `${t("version")} ${listed.headers.get("X-Config-Version") || ""}`;
  const rows = await Promise.all(state.integrations.map(async (i) => {
    const answer = i.enabled ? await api("GET", `/api/crm/sync-status/${encodeURIComponent(i.id)}`) : null;
    return [i, answer && answer.status === 200 ? answer.data : null];
  }));
  const body = $("#status tbody");
  body.replaceChildren();
  for (const [integration, status] of rows) {
    const tr = document.createElement("tr");
    tr.dataset.id = integration.id;
    const cells = [
      integration.id, integration.type,
      status ? status.delivered : t("none"), status ? status.failed : t("none"), status ? status.pending : t("none"),
      status ? status.circuit : t("none"),
      status && status.lastSuccess ? `${status.lastSuccess.at} ${status.lastSuccess.externalId || ""}` : t("none"),
      status && status.lastError ? `${status.lastError.at} ${status.lastError.error.code}: ${status.lastError.error.message}` : t("none"),
    ];
    const names = ["id", "type", "delivered", "failed", "pending", "circuit", "lastSuccess", "lastError"];
    cells.forEach((text, n) => {
      const td = document.createElement("td");
      td.textContent = String(text);
      td.dataset.col = names[n];
      if (names[n] === "circuit" && text === "open") td.className = "circuit-open";
      tr.append(td);
    });
    body.append(tr);
  }
  $("#refreshed-at").textContent = new Date().toLocaleTimeString(lang() === "zh" ? "zh-CN" : "en-GB");
}

document.addEventListener("DOMContentLoaded", () => {
  $("#test").addEventListener("click", () => withButton("#test", testConnection));
  $("#save").addEventListener("click", () => withButton("#save", () => save(false)));
  $("#dry").addEventListener("click", () => withButton("#dry", () => save(true)));
  start();
});
