// Virga console. Plain JavaScript, no dependencies. This file holds no data: everything the
// page shows comes from the gateway's authenticated API (/system/*, sent with the credentials
// of the sign-in, kept in sessionStorage). The page shows one namespace at a time and only the
// actions the caller's role allows. The console has an origin of its own, which never serves
// a function's answer: calls made from the page go through /system/virga/invoke/NAME.NS.
import {
  $, st, el, api, can, clock, errorText, fmtMs, fnKey, nsQuery, parsePairs, onUnauthorized,
  refusedText, FormErrors, HttpError, DEFAULT_NS,
} from './core.js';
import { loadCalls, renderCalls } from './calls.js';
import { sample, sampleMetrics, renderChart } from './chart.js';
import { initEdit, openEdit, showEditReplicas } from './edit.js';
import { initLogin, forgetLogin, showLogin } from './login.js';
import {
  loadNamespaces, firstNamespace, setNamespace, namespaceInAddress, forgetNamespace,
} from './ns.js';

const REFRESH_MS = 3000;
const MAX_LOG_LINES = 2000;

// ---------- session ----------

function signOut(message) {
  forgetLogin();
  forgetNamespace();
  st.auth = null;
  st.me = null;
  clearTimeout(st.timer);
  st.timer = null;
  resetView();
  showLogin(message);
}

async function start(auth, me, info) {
  st.auth = auth;
  st.me = me;
  $('login').hidden = true;
  $('app').hidden = false;
  const gw = $('gw-info');
  gw.replaceChildren();
  const p = info.provider || {};
  const tags = [location.host, 'version ' + ((info.version || {}).release || '?')];
  if (p.isolation) tags.push('isolation: ' + p.isolation);
  for (const t of tags) gw.append(el('span', { class: 'tag', text: t }));
  showRole();
  resetView();
  try {
    await loadNamespaces();
  } catch (e) {
    if (e.status === 401) return;
    showError('Could not list the namespaces: ' + e.message);
  }
  setNamespace(firstNamespace());
  refresh();
}

// Who is signed in; what their role may not do is hidden (the gateway refuses it anyway).
function showRole() {
  const { name, role, namespaces } = st.me;
  $('who').textContent = `${name} · ${role}`;
  $('deploy-card').hidden = !can('deployer');
  $('invoke-card').hidden = !can('invoker');
  const where = namespaces ? ' in ' + namespaces.join(', ') : '';
  const note = $('role-note');
  note.hidden = can('deployer');
  note.textContent = can('invoker')
    ? `Signed in as ${name}, an invoker${where}: you can call functions and read their ` +
      'definitions and logs. Deploying, editing, scaling and deleting need a deployer token.'
    : `Signed in as ${name}, a viewer${where}: read-only. Calling functions needs an invoker ` +
      'token; deploying, editing, scaling and deleting a deployer token.';
}

// Show namespace `ns` (from the switcher or the address), from a clean page.
function switchNamespace(ns) {
  if (!ns || ns === st.ns) return;
  setNamespace(ns);
  resetView();
  refresh();
}

// Forget what the page shows of the previous namespace or session.
function resetView() {
  st.seq++;
  stopLogs();
  for (const id of ['edit-dialog', 'confirm-delete']) if ($(id).open) $(id).close();
  st.rows.clear();
  $('fn-rows').replaceChildren();
  st.functions = [];
  st.triggers = new Map();
  st.samples.clear();
  st.latency = [];
  st.metrics.prev = null;
  $('fn-table').hidden = true;
  $('fn-empty').hidden = true;
  $('fn-summary').textContent = '';
  $('fn-error').hidden = true;
  renderCalls([]);
  for (const id of ['invoke-result', 'deploy-ok', 'deploy-error']) $(id).hidden = true;
  $('l-out').replaceChildren();
  setLogStatus('Pick a function to follow what it writes to stdout and stderr.');
  fillSelect($('i-fn'), 'Choose a function');
  fillSelect($('l-fn'), 'Choose a function');
  updateInvokeUrl();
  renderChart();
}

function showError(text) {
  $('fn-error').hidden = false;
  $('fn-error').textContent = text;
}

// ---------- functions list ----------

async function refresh() {
  clearTimeout(st.timer);
  if (!st.auth) return;
  // A refresh started later (or a namespace switch) makes this one's answer stale.
  const seq = ++st.seq;
  try {
    await loadNamespaces();
    const r = await api('GET', '/system/functions?' + nsQuery());
    if (!r.ok) throw new HttpError(r.status, await errorText(r));
    const list = await r.json();
    const triggers = await loadTriggers();
    const calls = await loadCalls();
    if (seq !== st.seq) return;
    list.sort((a, b) => a.name.localeCompare(b.name));
    st.functions = list;
    st.triggers = triggers;
    sample(list);
    await sampleMetrics();
    if (seq !== st.seq) return;
    renderFunctions();
    renderCalls(calls);
    renderChart();
    $('fn-error').hidden = true;
    $('refresh-state').textContent = 'Updated ' + clock(new Date());
  } catch (e) {
    if (e.status === 401 || seq !== st.seq) return;
    showError(`Could not load the functions of ${st.ns}: ${e.message}`);
    $('refresh-state').textContent = 'Refresh failed';
  }
  if (st.auth) st.timer = setTimeout(refresh, REFRESH_MS);
}

// The shown namespace's triggers (GET /system/virga/triggers), by function name; none if it
// fails. The list names functions by key (NAME, or NAME.NS outside the default namespace).
async function loadTriggers() {
  const byName = new Map();
  const r = await api('GET', '/system/virga/triggers');
  if (!r.ok) return byName;
  for (const t of await r.json()) {
    const [name, ns] = t.function.includes('.') ? t.function.split('.') : [t.function, DEFAULT_NS];
    if (ns !== st.ns) continue;
    if (!byName.has(name)) byName.set(name, []);
    byName.get(name).push(t);
  }
  return byName;
}

// One line per trigger: "cron @every 1s, next 12:00:05" or "nats orders (off)".
function triggerText(t) {
  let s = t.connector + ' ' + (t.schedule || t.topic);
  if (t.stream) s += ' (stream ' + t.stream + ')';
  if (!t.enabled) s += ' (off)';
  if (t.nextRun) s += ', next ' + clock(new Date(t.nextRun));
  if (t.lastRun) s += ', last ' + clock(new Date(t.lastRun));
  return s;
}

function statusOf(f) {
  if (f.availableReplicas > 0) return ['ready', 'Ready'];
  if (f.replicas === 0) return ['idle', 'Scaled to zero'];
  return ['starting', 'Starting'];
}

function renderFunctions() {
  const tbody = $('fn-rows');
  const seen = new Set();
  for (const f of st.functions) {
    seen.add(f.name);
    let row = st.rows.get(f.name);
    if (!row) {
      row = makeRow(f.name);
      st.rows.set(f.name, row);
    }
    const [cls, label] = statusOf(f);
    row.status.className = 'status ' + cls;
    row.status.textContent = label;
    row.replicas.textContent = f.availableReplicas + ' / ' + f.replicas;
    row.invocations.textContent = Math.round(f.invocationCount || 0).toLocaleString();
    const runs = f.envProcess ? f.envProcess : f.image;
    row.runs.textContent = runs || '—';
    row.runs.title = runs || '';
    const triggers = (st.triggers && st.triggers.get(f.name)) || [];
    row.triggers.replaceChildren(...(triggers.length
      ? triggers.map((t) => el('div', { class: 'trigger', text: triggerText(t) }))
      : [document.createTextNode('—')]));
    tbody.append(row.tr); // keeps order sorted; moving an element keeps its state
  }
  for (const [name, row] of st.rows) {
    if (!seen.has(name)) {
      row.tr.remove();
      st.rows.delete(name);
    }
  }
  const n = st.functions.length;
  $('fn-empty').hidden = n > 0;
  $('fn-table').hidden = n === 0;
  const ready = st.functions.filter((f) => f.availableReplicas > 0).length;
  $('fn-summary').textContent = n ? `${n} function${n === 1 ? '' : 's'}, ${ready} ready` : '';
  fillSelect($('i-fn'), 'Choose a function');
  fillSelect($('l-fn'), 'Choose a function');
  showEditReplicas();
}

function makeRow(name) {
  const status = el('span');
  const replicas = el('td', { class: 'num' });
  const invocations = el('td', { class: 'num' });
  const runs = el('td', { class: 'runs' });
  const triggers = el('td', { class: 'triggers' });
  const btn = (text, action, cls) => el('button', {
    type: 'button', class: 'small-btn ' + cls, text, 'data-action': action, 'data-name': name,
  });
  // Only the actions the role allows; a viewer's "Details" opens the definition read-only.
  const deployer = can('deployer');
  const tr = el('tr', { 'data-name': name },
    el('td', { class: 'name', text: name }),
    el('td', {}, status),
    replicas, invocations, runs, triggers,
    el('td', { class: 'actions' },
      can('invoker') ? btn('Invoke', 'invoke', 'secondary') : null,
      btn('Logs', 'logs', 'ghost'),
      deployer ? btn('Edit', 'edit', 'ghost') : btn('Details', 'details', 'ghost'),
      deployer ? btn('Delete', 'delete', 'ghost link-danger') : null));
  return { tr, status, replicas, invocations, runs, triggers };
}

function fillSelect(select, placeholder) {
  const current = select.value;
  const names = st.functions.map((f) => f.name);
  const have = Array.from(select.options).map((o) => o.value);
  const want = [''].concat(names);
  if (have.length === want.length && have.every((v, i) => v === want[i])) return;
  select.replaceChildren(el('option', { value: '', text: names.length ? placeholder : 'No functions yet' }));
  for (const n of names) select.append(el('option', { value: n, text: n }));
  select.value = names.includes(current) ? current : '';
}

function selectFunction(select, name) {
  fillSelect(select, 'Choose a function');
  if (!Array.from(select.options).some((o) => o.value === name)) {
    select.append(el('option', { value: name, text: name }));
  }
  select.value = name;
}

function onRowAction(ev) {
  const b = ev.target.closest('button[data-action]');
  if (!b) return;
  const name = b.getAttribute('data-name');
  const action = b.getAttribute('data-action');
  if (action === 'invoke') {
    selectFunction($('i-fn'), name);
    updateInvokeUrl();
    $('invoke-card').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
    $('i-body').focus();
  } else if (action === 'logs') {
    selectFunction($('l-fn'), name);
    followLogs(name);
    $('logs-card').scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  } else if (action === 'edit' || action === 'details') {
    openEdit(name, action === 'details');
  } else if (action === 'delete') {
    askDelete(name);
  }
}

// ---------- deploy ----------

const IMAGE = ['err-image', 'd-image', 'd-envProcess'];
const LIMITS = ['err-limits', 'd-memory', 'd-cpu'];
const deployErrors = new FormErrors({
  service: ['err-service', 'd-service'], image: IMAGE, envProcess: IMAGE,
  envVars: ['err-envVars', 'd-envVars'], labels: ['err-labels', 'd-labels'],
  limits: LIMITS, requests: LIMITS,
}, 'deploy-error', 'service');

function deploymentFromForm() {
  const d = {
    service: $('d-service').value.trim(),
    image: $('d-image').value.trim(),
    namespace: st.ns,
  };
  const proc = $('d-envProcess').value.trim();
  if (proc) d.envProcess = proc;
  const env = parsePairs($('d-envVars').value, 'envVars');
  if (Object.keys(env).length) d.envVars = env;
  const labels = parsePairs($('d-labels').value, 'labels');
  if (Object.keys(labels).length) d.labels = labels;
  const memory = $('d-memory').value.trim();
  const cpu = $('d-cpu').value.trim();
  if (memory || cpu) d.limits = { memory, cpu };
  return d;
}

async function onDeploy(ev) {
  ev.preventDefault();
  deployErrors.clear();
  $('deploy-ok').hidden = true;
  let d;
  try {
    d = deploymentFromForm();
  } catch (e) {
    deployErrors.show(e.field, e.message);
    return;
  }
  const btn = $('deploy-submit');
  btn.disabled = true;
  btn.textContent = 'Deploying…';
  try {
    const r = await api('POST', '/system/functions', d);
    if (!r.ok) {
      deployErrors.api(r.status, await errorText(r));
      return;
    }
    $('deploy-form').reset();
    $('deploy-ok').hidden = false;
    $('deploy-ok').textContent = `Deployed ${d.service}. It shows as Ready once an instance is up.`;
    await refresh();
    selectFunction($('i-fn'), d.service);
    selectFunction($('l-fn'), d.service);
    updateInvokeUrl();
  } catch (e) {
    if (e.status !== 401) deployErrors.api(0, 'Could not reach the gateway: ' + e.message);
  } finally {
    btn.disabled = false;
    btn.textContent = 'Deploy';
  }
}

// ---------- invoke ----------

function updateInvokeUrl() {
  const name = $('i-fn').value;
  $('invoke-url').textContent = name ? `${$('i-method').value} /function/${fnKey(name)}` : '';
}

async function onInvoke(ev) {
  ev.preventDefault();
  $('err-invoke').textContent = '';
  const name = $('i-fn').value;
  if (!name) {
    $('err-invoke').textContent = 'Choose a function to call.';
    $('i-fn').focus();
    return;
  }
  const method = $('i-method').value;
  const body = $('i-body').value;
  const btn = $('invoke-submit');
  btn.disabled = true;
  btn.textContent = 'Calling…';
  const t0 = performance.now();
  try {
    const init = {
      method, headers: { Authorization: st.auth }, credentials: 'omit', cache: 'no-store',
    };
    if (method !== 'GET' && method !== 'HEAD') init.body = body;
    const r = await fetch('/system/virga/invoke/' + encodeURIComponent(name) + '.' + st.ns, init);
    // The gateway's 401 ends the session; a function's own 401 (it carries the call's
    // X-Call-Id) is just its answer.
    if (r.status === 401 && !r.headers.has('X-Call-Id')) {
      signOut(await refusedText(r));
      return;
    }
    const text = await r.text();
    const ms = performance.now() - t0;
    const inFn = parseFloat(r.headers.get('X-Duration-Seconds'));
    showResult(r, text, ms, inFn);
    const latency = Number.isFinite(inFn) ? inFn * 1000 : ms;
    if (st.metrics.available !== true) st.latency.push({ t: Date.now(), name, ms: latency, n: 1 });
    renderChart();
  } catch (e) {
    $('err-invoke').textContent = 'The call failed: ' + e.message;
  } finally {
    btn.disabled = false;
    btn.textContent = 'Invoke';
  }
}

function showResult(r, text, ms, inFn) {
  $('invoke-result').hidden = false;
  const pill = $('i-status');
  pill.textContent = `${r.status} ${r.statusText || ''}`.trim();
  pill.className = 'pill s' + Math.floor(r.status / 100);
  let d = fmtMs(ms) + ' round trip';
  if (Number.isFinite(inFn)) d += ` · ${fmtMs(inFn * 1000)} in the gateway (X-Duration-Seconds)`;
  $('i-duration').textContent = d;
  const dl = $('i-headers');
  dl.replaceChildren();
  for (const [k, v] of r.headers) dl.append(el('dt', { text: k }), el('dd', { text: v }));
  const out = $('i-output');
  out.textContent = text === '' ? '(empty body)' : text;
  out.classList.toggle('empty-body', text === '');
}

// ---------- logs ----------

function setLogStatus(text, isError) {
  const s = $('l-status');
  s.textContent = text;
  s.classList.toggle('error', !!isError);
}

function stopLogs() {
  if (st.logs) {
    st.logs.ctrl.abort();
    st.logs = null;
  }
  $('l-toggle').textContent = 'Follow';
}

function appendLog(line) {
  const out = $('l-out');
  const nearBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 24;
  let node;
  try {
    const e = JSON.parse(line);
    const ts = e.timestamp ? new Date(e.timestamp) : null;
    node = el('div', { class: 'log-line' },
      el('span', { class: 'ts', text: (ts && !isNaN(ts) ? clock(ts) : '--:--:--') + ' ' }),
      e.instance ? el('span', { class: 'inst', text: String(e.instance).slice(0, 12) + ' ' }) : null,
      el('span', { class: 'text', text: String(e.text ?? '') }));
  } catch (_) {
    node = el('div', { class: 'log-line', text: line });
  }
  out.append(node);
  while (out.childElementCount > MAX_LOG_LINES) out.firstElementChild.remove();
  if (nearBottom) out.scrollTop = out.scrollHeight;
}

async function followLogs(name) {
  stopLogs();
  if (!name) {
    setLogStatus('Pick a function to follow what it writes to stdout and stderr.');
    return;
  }
  const ctrl = new AbortController();
  const session = { name, ctrl };
  st.logs = session;
  $('l-toggle').textContent = 'Stop';
  $('l-out').replaceChildren();
  setLogStatus(`Connecting to the logs of ${name}…`);
  const path = `/system/logs?name=${encodeURIComponent(name)}&${nsQuery()}&tail=100&follow=true`;
  try {
    const r = await api('GET', path, undefined, ctrl.signal);
    if (!r.ok || !r.body) {
      const msg = await errorText(r);
      if ((r.status === 404 && /no such route/i.test(msg)) || r.status === 405 || r.status === 501) {
        setLogStatus('Logs unavailable: this gateway does not serve /system/logs.', true);
      } else {
        setLogStatus('Logs unavailable: ' + msg, true);
      }
      if (st.logs === session) stopLogs();
      return;
    }
    setLogStatus(`Following ${name}: new lines appear as the function writes them.`);
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        if (line.trim()) appendLog(line);
      }
    }
    if (buf.trim()) appendLog(buf);
    if (st.logs === session) {
      setLogStatus(`The log stream of ${name} ended. Press Follow to reconnect.`);
      stopLogs();
    }
  } catch (e) {
    if (ctrl.signal.aborted || e.status === 401) return;
    setLogStatus('Logs unavailable: ' + e.message, true);
    if (st.logs === session) stopLogs();
  }
}

// ---------- delete ----------

function askDelete(name) {
  st.pendingDelete = name;
  $('confirm-name').textContent = name;
  $('confirm-error').textContent = '';
  $('confirm-delete').showModal();
  $('confirm-cancel').focus();
}

async function onConfirmDelete(ev) {
  ev.preventDefault();
  const name = st.pendingDelete;
  if (!name) return;
  const btn = $('confirm-ok');
  btn.disabled = true;
  try {
    const r = await api('DELETE', '/system/functions', { functionName: name, namespace: st.ns });
    if (!r.ok && r.status !== 404) {
      $('confirm-error').textContent = await errorText(r);
      return;
    }
    $('confirm-delete').close();
    st.pendingDelete = null;
    st.samples.delete(name);
    st.latency = st.latency.filter((s) => s.name !== name);
    if (st.logs && st.logs.name === name) stopLogs();
    await refresh();
  } catch (e) {
    if (e.status !== 401) $('confirm-error').textContent = 'Could not reach the gateway: ' + e.message;
  } finally {
    btn.disabled = false;
  }
}

// ---------- wiring ----------

function init() {
  onUnauthorized(signOut);
  initEdit(refresh);
  $('ns-select').addEventListener('change', () => switchNamespace($('ns-select').value));
  window.addEventListener('hashchange', () => {
    if (st.auth) switchNamespace(namespaceInAddress());
  });
  $('logout').addEventListener('click', () => signOut(''));
  $('deploy-form').addEventListener('submit', onDeploy);
  deployErrors.watch($('deploy-form'));
  $('invoke-form').addEventListener('submit', onInvoke);
  $('i-fn').addEventListener('change', updateInvokeUrl);
  $('i-method').addEventListener('change', updateInvokeUrl);
  $('fn-rows').addEventListener('click', onRowAction);
  $('l-fn').addEventListener('change', () => followLogs($('l-fn').value));
  $('l-toggle').addEventListener('click', () => {
    if (st.logs) {
      stopLogs();
      setLogStatus('Stopped. Press Follow to continue.');
    } else {
      followLogs($('l-fn').value);
    }
  });
  $('l-clear').addEventListener('click', () => $('l-out').replaceChildren());
  $('confirm-ok').addEventListener('click', onConfirmDelete);
  $('confirm-cancel').addEventListener('click', (ev) => {
    ev.preventDefault();
    st.pendingDelete = null;
    $('confirm-delete').close();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && st.auth) refresh();
  });
  initLogin(start);
}

init();
