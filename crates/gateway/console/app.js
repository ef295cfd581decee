// Virga console. Plain JavaScript, no dependencies. This file holds no data: everything the
// page shows comes from the gateway's authenticated API (/system/*, sent with HTTP basic auth
// from sessionStorage). The console has an origin of its own, which never serves a function's
// answer: calls made from the page go through /system/virga/invoke/NAME.
'use strict';

(function () {
  const REFRESH_MS = 3000;
  const WINDOW_MS = 5 * 60 * 1000;
  const BUCKET_MS = 15 * 1000;
  const BUCKETS = WINDOW_MS / BUCKET_MS;
  const MAX_LOG_LINES = 2000;
  const AUTH_KEY = 'virga.auth';
  const COLORS = ['#4f46e5', '#0ea5e9', '#16a34a', '#f59e0b', '#db2777', '#7c3aed', '#0d9488',
    '#dc2626', '#65a30d', '#ea580c'];
  // Which input shows a 400 message that starts with "FIELD: ".
  const FIELD_ERRORS = {
    service: 'service', image: 'image', envProcess: 'image', envVars: 'envVars',
    labels: 'labels', limits: 'limits', requests: 'limits',
  };
  const FIELD_INPUTS = {
    service: ['d-service'], image: ['d-image', 'd-envProcess'], envVars: ['d-envVars'],
    labels: ['d-labels'], limits: ['d-memory', 'd-cpu'],
  };

  const $ = (id) => document.getElementById(id);
  const st = {
    auth: null,
    functions: [],
    rows: new Map(),
    colors: new Map(),
    samples: new Map(), // name -> [{t, count}]
    latency: [], // {t, name, ms, n}
    metrics: { available: null, missing: false, prev: null, lastTry: 0 },
    timer: null,
    logs: null, // {name, ctrl}
    pendingDelete: null,
  };

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) if (c != null) e.append(c);
    return e;
  }

  function basic(user, password) {
    const bytes = new TextEncoder().encode(user + ':' + password);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return btoa(bin);
  }

  function colorOf(name) {
    if (!st.colors.has(name)) st.colors.set(name, COLORS[st.colors.size % COLORS.length]);
    return st.colors.get(name);
  }

  function fmtMs(ms) {
    if (ms < 1) return ms.toFixed(2) + ' ms';
    if (ms < 100) return ms.toFixed(1) + ' ms';
    if (ms < 10000) return Math.round(ms) + ' ms';
    return (ms / 1000).toFixed(1) + ' s';
  }

  function clock(d) {
    return d.toLocaleTimeString([], { hour12: false });
  }

  async function errorText(r) {
    let t = '';
    try { t = (await r.text()).trim(); } catch (_) { /* body unreadable */ }
    return t || (r.status + ' ' + r.statusText);
  }

  // Every /system call: basic auth from the session, never the browser's own credential cache.
  async function api(method, path, body, signal) {
    const headers = { Authorization: 'Basic ' + st.auth };
    const init = { method, headers, credentials: 'omit', cache: 'no-store', signal };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    if (r.status === 401) {
      signOut('The gateway no longer accepts these credentials: sign in again.');
      throw new HttpError(401, 'unauthorized');
    }
    return r;
  }

  // ---------- login ----------

  function showLogin(message) {
    $('app').hidden = true;
    $('login').hidden = false;
    $('login-error').textContent = message || '';
    $('login-password').setAttribute('aria-invalid', message ? 'true' : 'false');
    $('login-password').focus();
  }

  async function checkAuth(auth) {
    const r = await fetch('/system/info', {
      headers: { Authorization: 'Basic ' + auth }, credentials: 'omit', cache: 'no-store',
    });
    if (r.status === 401) throw new HttpError(401, 'Wrong user or password.');
    if (!r.ok) throw new HttpError(r.status, await errorText(r));
    return r.json();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const user = $('login-user').value.trim() || 'admin';
    const password = $('login-password').value;
    if (!password) {
      showLogin('Enter the admin password.');
      return;
    }
    const btn = $('login-submit');
    btn.disabled = true;
    try {
      const auth = basic(user, password);
      const info = await checkAuth(auth);
      sessionStorage.setItem(AUTH_KEY, auth);
      $('login-password').value = '';
      start(auth, info);
    } catch (e) {
      showLogin(e instanceof HttpError ? e.message : 'Could not reach the gateway: ' + e.message);
    } finally {
      btn.disabled = false;
    }
  }

  function signOut(message) {
    sessionStorage.removeItem(AUTH_KEY);
    st.auth = null;
    clearTimeout(st.timer);
    st.timer = null;
    stopLogs();
    showLogin(message);
  }

  function start(auth, info) {
    st.auth = auth;
    $('login').hidden = true;
    $('app').hidden = false;
    const gw = $('gw-info');
    gw.replaceChildren();
    const p = info.provider || {};
    const tags = [location.host, 'version ' + ((info.version || {}).release || '?')];
    if (p.isolation) tags.push('isolation: ' + p.isolation);
    for (const t of tags) gw.append(el('span', { class: 'tag', text: t }));
    refresh();
  }

  // ---------- functions list ----------

  async function refresh() {
    clearTimeout(st.timer);
    if (!st.auth) return;
    try {
      const r = await api('GET', '/system/functions');
      if (!r.ok) throw new HttpError(r.status, await errorText(r));
      const list = await r.json();
      list.sort((a, b) => a.name.localeCompare(b.name));
      st.functions = list;
      sample(list);
      await sampleMetrics();
      renderFunctions();
      renderChart();
      $('fn-error').hidden = true;
      $('refresh-state').textContent = 'Updated ' + clock(new Date());
    } catch (e) {
      if (e.status === 401) return;
      $('fn-error').hidden = false;
      $('fn-error').textContent = 'Could not load functions: ' + e.message;
      $('refresh-state').textContent = 'Refresh failed';
    }
    if (st.auth) st.timer = setTimeout(refresh, REFRESH_MS);
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
  }

  function makeRow(name) {
    const status = el('span');
    const replicas = el('td', { class: 'num' });
    const invocations = el('td', { class: 'num' });
    const runs = el('td', { class: 'runs' });
    const btn = (text, action, cls) => el('button', {
      type: 'button', class: 'small-btn ' + cls, text, 'data-action': action, 'data-name': name,
    });
    const tr = el('tr', { 'data-name': name },
      el('td', { class: 'name', text: name }),
      el('td', {}, status),
      replicas, invocations, runs,
      el('td', { class: 'actions' },
        btn('Invoke', 'invoke', 'secondary'),
        btn('Logs', 'logs', 'ghost'),
        btn('Delete', 'delete', 'ghost link-danger')));
    return { tr, status, replicas, invocations, runs };
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
    } else if (action === 'delete') {
      askDelete(name);
    }
  }

  // ---------- deploy ----------

  function clearDeployErrors() {
    for (const id of ['err-service', 'err-image', 'err-envVars', 'err-labels', 'err-limits']) {
      $(id).textContent = '';
    }
    for (const ids of Object.values(FIELD_INPUTS)) {
      for (const id of ids) $(id).removeAttribute('aria-invalid');
    }
    $('deploy-error').hidden = true;
    $('deploy-ok').hidden = true;
  }

  function fieldError(field, message) {
    $('err-' + field).textContent = message;
    const inputs = FIELD_INPUTS[field];
    for (const id of inputs) $(id).setAttribute('aria-invalid', 'true');
    $(inputs[0]).focus();
  }

  function parsePairs(text, field) {
    const out = {};
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line || line.startsWith('#')) continue;
      const eq = line.indexOf('=');
      if (eq <= 0) {
        throw { field, message: `${field}: line ${i + 1} ("${line}") is not KEY=value` };
      }
      out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
    }
    return out;
  }

  function deploymentFromForm() {
    const d = {
      service: $('d-service').value.trim(),
      image: $('d-image').value.trim(),
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

  function showDeployError(status, message) {
    const m = /^([A-Za-z][A-Za-z0-9_.]*):\s/.exec(message);
    let field = m ? FIELD_ERRORS[m[1]] : null;
    if (!field && status === 409) field = 'service';
    if (field) {
      fieldError(field, message);
    } else {
      $('deploy-error').hidden = false;
      $('deploy-error').textContent = message;
    }
  }

  async function onDeploy(ev) {
    ev.preventDefault();
    clearDeployErrors();
    let d;
    try {
      d = deploymentFromForm();
    } catch (e) {
      fieldError(e.field, e.message);
      return;
    }
    const btn = $('deploy-submit');
    btn.disabled = true;
    btn.textContent = 'Deploying…';
    try {
      const r = await api('POST', '/system/functions', d);
      if (!r.ok) {
        showDeployError(r.status, await errorText(r));
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
      if (e.status !== 401) showDeployError(0, 'Could not reach the gateway: ' + e.message);
    } finally {
      btn.disabled = false;
      btn.textContent = 'Deploy';
    }
  }

  // ---------- invoke ----------

  function updateInvokeUrl() {
    const name = $('i-fn').value;
    $('invoke-url').textContent = name ? `${$('i-method').value} /function/${name}` : '';
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
        method, headers: { Authorization: 'Basic ' + st.auth }, credentials: 'omit', cache: 'no-store',
      };
      if (method !== 'GET' && method !== 'HEAD') init.body = body;
      const r = await fetch('/system/virga/invoke/' + encodeURIComponent(name), init);
      if (r.status === 401) {
        signOut('The gateway no longer accepts these credentials: sign in again.');
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
    const path = `/system/logs?name=${encodeURIComponent(name)}&tail=100&follow=true`;
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
      const r = await api('DELETE', '/system/functions', { functionName: name });
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

  // ---------- chart ----------

  function sample(list) {
    const now = Date.now();
    const names = new Set();
    for (const f of list) {
      names.add(f.name);
      const s = st.samples.get(f.name) || [];
      s.push({ t: now, count: f.invocationCount || 0 });
      while (s.length > 2 && s[1].t < now - WINDOW_MS) s.shift();
      st.samples.set(f.name, s);
    }
    for (const n of st.samples.keys()) if (!names.has(n)) st.samples.delete(n);
    st.latency = st.latency.filter((x) => x.t >= now - WINDOW_MS);
  }

  // Prometheus text: sum gateway_functions_seconds_{sum,count} per function_name.
  function parseMetrics(text) {
    const out = new Map();
    const re = /^gateway_functions_seconds_(sum|count)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)/;
    for (const line of text.split('\n')) {
      const m = re.exec(line);
      if (!m) continue;
      const fn = /function_name="([^"]*)"/.exec(m[2]);
      if (!fn) continue;
      const name = fn[1].replace(/\.openfaas-fn$/, '');
      const v = parseFloat(m[3]);
      if (!Number.isFinite(v)) continue;
      const e = out.get(name) || { sum: 0, count: 0 };
      e[m[1]] += v;
      out.set(name, e);
    }
    return out;
  }

  // Latency per function from the gateway's /metrics, when it has them; a gateway without the
  // route is asked again after a minute.
  async function sampleMetrics() {
    const m = st.metrics;
    const now = Date.now();
    if (m.missing && now - m.lastTry < 60000) return;
    m.lastTry = now;
    try {
      const r = await api('GET', '/metrics');
      m.missing = !r.ok;
      if (!r.ok) {
        m.available = false;
        return;
      }
      const text = await r.text();
      m.available = text.includes('gateway_functions_seconds');
      const cur = parseMetrics(text);
      if (m.prev) {
        for (const [name, c] of cur) {
          const p = m.prev.get(name) || { sum: 0, count: 0 };
          const n = c.count - p.count;
          if (n > 0 && c.sum >= p.sum) st.latency.push({ t: now, name, ms: ((c.sum - p.sum) / n) * 1000, n });
        }
      }
      m.prev = cur;
    } catch (e) {
      if (e.status !== 401) {
        m.available = false;
        m.missing = true;
      }
    }
  }

  function bucketOf(t, now) {
    const b = BUCKETS - 1 - Math.floor((now - t) / BUCKET_MS);
    return b >= 0 && b < BUCKETS ? b : -1;
  }

  function series() {
    const now = Date.now();
    const calls = new Map();
    const lat = new Map();
    for (const [name, s] of st.samples) {
      const v = new Array(BUCKETS).fill(0);
      let any = false;
      for (let i = 1; i < s.length; i++) {
        const d = s[i].count - s[i - 1].count;
        const b = bucketOf(s[i].t, now);
        if (d > 0 && b >= 0) {
          v[b] += d;
          any = true;
        }
      }
      // Before the page's first sample nothing is known: leave those buckets empty.
      const first = bucketOf(s[0].t, now);
      for (let i = 0; i < first; i++) v[i] = null;
      if (any) calls.set(name, v);
    }
    const acc = new Map();
    for (const x of st.latency) {
      const b = bucketOf(x.t, now);
      if (b < 0) continue;
      const a = acc.get(x.name) || Array.from({ length: BUCKETS }, () => ({ sum: 0, n: 0 }));
      a[b].sum += x.ms * x.n;
      a[b].n += x.n;
      acc.set(x.name, a);
    }
    for (const [name, a] of acc) lat.set(name, a.map((c) => (c.n ? c.sum / c.n : null)));
    return { calls, lat };
  }

  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 4, 8, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart(node, data, unit) {
    node.replaceChildren();
    const W = 560, H = 150, L = 44, R = 8, T = 8, B = 22;
    const w = W - L - R, h = H - T - B;
    let max = 0;
    for (const v of data.values()) for (const x of v) if (x != null && x > max) max = x;
    max = niceMax(max);
    // Counts get whole-number gridlines.
    if (!unit) max = Math.max(4, Math.ceil(max / 4) * 4);
    for (let i = 0; i <= 4; i++) {
      const y = T + h - (h * i) / 4;
      node.append(svg('line', { x1: L, x2: L + w, y1: y, y2: y, class: 'grid' }));
      const label = svg('text', { x: L - 6, y: y + 3.5, 'text-anchor': 'end', class: 'axis-label' });
      const val = (max * i) / 4;
      label.textContent = String(Number(val.toPrecision(3))) + unit;
      node.append(label);
    }
    for (let m = 5; m >= 0; m--) {
      const x = L + w - (w * m * 60000) / WINDOW_MS;
      const label = svg('text', { x, y: H - 6, 'text-anchor': m === 0 ? 'end' : 'middle', class: 'axis-label' });
      label.textContent = m === 0 ? 'now' : `−${m} min`;
      node.append(label);
    }
    const xOf = (i) => L + (w * (i + 0.5)) / BUCKETS;
    const yOf = (v) => T + h - (h * v) / max;
    for (const [name, v] of data) {
      const color = colorOf(name);
      let d = '';
      let pen = false;
      v.forEach((x, i) => {
        if (x == null) {
          pen = false;
          return;
        }
        d += (pen ? 'L' : 'M') + xOf(i).toFixed(1) + ' ' + yOf(x).toFixed(1) + ' ';
        pen = true;
      });
      if (d) {
        node.append(svg('path', {
          d, fill: 'none', stroke: color, 'stroke-width': 2, 'stroke-linejoin': 'round',
          'stroke-linecap': 'round',
        }));
      }
      v.forEach((x, i) => {
        if (x != null && x > 0) {
          const c = svg('circle', { cx: xOf(i), cy: yOf(x), r: 3, fill: color });
          const tip = svg('title');
          tip.textContent = `${name}: ${unit ? fmtMs(x) : x}`;
          c.append(tip);
          node.append(c);
        }
      });
    }
  }

  function renderChart() {
    const { calls, lat } = series();
    const any = calls.size > 0 || lat.size > 0;
    $('chart-empty').hidden = any;
    $('charts').hidden = !any;
    if (!any) return;
    // A function with calls gets a full line (zeros included) so bursts read as bursts.
    drawChart($('chart-calls'), calls, '');
    drawChart($('chart-latency'), lat, ' ms');
    const legend = $('chart-legend');
    legend.replaceChildren();
    for (const name of new Set([...calls.keys(), ...lat.keys()])) {
      const swatch = el('i');
      swatch.style.background = colorOf(name);
      legend.append(el('span', {}, swatch, name));
    }
    $('chart-source').textContent = st.metrics.available
      ? 'Latency from the gateway’s /metrics (gateway_functions_seconds).'
      : 'Latency from the calls made on this page; calls from the function list’s counters.';
  }

  // ---------- wiring ----------

  function init() {
    $('login-form').addEventListener('submit', onLogin);
    $('logout').addEventListener('click', () => signOut(''));
    $('deploy-form').addEventListener('submit', onDeploy);
    $('deploy-form').addEventListener('input', (ev) => {
      const id = ev.target.id;
      for (const [field, ids] of Object.entries(FIELD_INPUTS)) {
        if (ids.includes(id)) {
          $('err-' + field).textContent = '';
          for (const i of ids) $(i).removeAttribute('aria-invalid');
        }
      }
    });
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

    const saved = sessionStorage.getItem(AUTH_KEY);
    if (!saved) {
      showLogin('');
      return;
    }
    checkAuth(saved)
      .then((info) => start(saved, info))
      .catch((e) => {
        sessionStorage.removeItem(AUTH_KEY);
        showLogin(e.status === 401 ? 'Your saved session is no longer valid: sign in again.' : e.message);
      });
  }

  init();
})();
