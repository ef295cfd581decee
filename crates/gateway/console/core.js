// What every part of the console shares: the page's state, DOM helpers, the authenticated API
// call and the field errors of a form.

export const $ = (id) => document.getElementById(id);

// The namespace a gateway uses when none is named.
export const DEFAULT_NS = 'openfaas-fn';

export const st = {
  auth: null, // the Authorization header: 'Basic …' or 'Bearer …'
  me: null, // GET /system/virga/whoami: {name, role, namespaces}
  ns: DEFAULT_NS, // the namespace shown
  namespaces: [], // the ones the caller may see
  functions: [],
  triggers: new Map(), // name -> rows of /system/virga/triggers
  rows: new Map(),
  colors: new Map(),
  samples: new Map(), // name -> [{t, count}]
  latency: [], // {t, name, ms, n}
  metrics: { available: null, missing: false, prev: null, lastTry: 0 },
  timer: null,
  seq: 0, // bumped by every refresh and reset: an older refresh's answer is dropped
  logs: null, // {name, ctrl}
  pendingDelete: null,
  editing: null, // {name, fn, base, hidden}
};

export class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function el(tag, attrs, ...children) {
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

export function fmtMs(ms) {
  if (ms < 1) return ms.toFixed(2) + ' ms';
  if (ms < 100) return ms.toFixed(1) + ' ms';
  if (ms < 10000) return Math.round(ms) + ' ms';
  return (ms / 1000).toFixed(1) + ' s';
}

export function clock(d) {
  return d.toLocaleTimeString([], { hour12: false });
}

export async function errorText(r) {
  let t = '';
  try { t = (await r.text()).trim(); } catch (_) { /* body unreadable */ }
  return t || (r.status + ' ' + r.statusText);
}

const ROLES = ['viewer', 'invoker', 'deployer', 'admin'];

// Whether the signed-in caller's role is `role` or above (the gateway decides; this only
// hides what it would refuse).
export function can(role) {
  return !!st.me && ROLES.indexOf(st.me.role) >= ROLES.indexOf(role);
}

// The name /function/ and the invoke route take: NAME in the default namespace, NAME.NS in
// any other.
export function fnKey(name) {
  return st.ns === DEFAULT_NS ? name : name + '.' + st.ns;
}

// `?namespace=` of the shown namespace, for the routes that read one.
export function nsQuery() {
  return 'namespace=' + encodeURIComponent(st.ns);
}

// Why the session ends when the gateway answers 401 `r` (its message says why: e.g. a
// revoked or expired token).
export async function refusedText(r) {
  const why = await errorText(r);
  return `The gateway no longer accepts these credentials (${why}): sign in again.`;
}

let unauthorized = () => {};

// What to do when the gateway stops accepting the session's credentials (sign out).
export function onUnauthorized(f) {
  unauthorized = f;
}

// Every /system call: the session's credentials, never the browser's own credential cache.
export async function api(method, path, body, signal) {
  const headers = { Authorization: st.auth };
  const init = { method, headers, credentials: 'omit', cache: 'no-store', signal };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    unauthorized(await refusedText(r));
    throw new HttpError(401, 'unauthorized');
  }
  return r;
}

// KEY=value lines (blank lines and # comments skipped) → object; a bad line throws
// {field, message} for that form field.
export function parsePairs(text, field) {
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

// The error lines of one form. The API's 400 messages start with the field they are about
// ("envVars.exec_timeout: …", "labels: …"): such a message shows next to that field's inputs,
// any other in the form's banner.
export class FormErrors {
  // fields: {apiField: [errorLineId, inputId, …]}; conflict: the field a 409 is about.
  constructor(fields, banner, conflict) {
    this.fields = fields;
    this.banner = banner;
    this.conflict = conflict;
  }

  clear() {
    for (const [line, ...inputs] of Object.values(this.fields)) {
      $(line).textContent = '';
      for (const id of inputs) $(id).removeAttribute('aria-invalid');
    }
    $(this.banner).hidden = true;
  }

  show(field, message) {
    const [line, ...inputs] = this.fields[field];
    $(line).textContent = message;
    for (const id of inputs) $(id).setAttribute('aria-invalid', 'true');
    if (inputs.length) $(inputs[0]).focus();
  }

  // The API refused with `status` and `message`.
  api(status, message) {
    const m = /^([A-Za-z]+)[.:]/.exec(message);
    let field = m && Object.hasOwn(this.fields, m[1]) ? m[1] : null;
    if (!field && status === 409 && this.conflict) field = this.conflict;
    if (field) {
      this.show(field, message);
    } else {
      $(this.banner).hidden = false;
      $(this.banner).textContent = message;
    }
  }

  // Typing into a field's input clears that field's error.
  watch(form) {
    form.addEventListener('input', (ev) => {
      for (const [line, ...inputs] of Object.values(this.fields)) {
        if (!inputs.includes(ev.target.id)) continue;
        $(line).textContent = '';
        for (const id of inputs) $(id).removeAttribute('aria-invalid');
      }
    });
  }
}
