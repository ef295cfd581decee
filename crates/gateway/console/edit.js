// The edit dialog: a deployed function's definition, prefilled from GET /system/function/NAME
// and saved with PUT /system/functions, and its replicas (POST /system/scale-function/NAME),
// in the namespace shown. For a role that may not change it, the same dialog shows the
// definition read-only, without the scale and save controls.
import { $, st, api, errorText, nsQuery, parsePairs, FormErrors } from './core.js';

const SCALE_MAX = 'com.openfaas.scale.max';
// The definition's fields the form does not show: saved back as they are.
const KEPT = ['constraints', 'requests', 'readOnlyRootFilesystem'];
// KEY=value fields: [API field, textarea].
const PAIRS = [['envVars', 'e-envVars'], ['labels', 'e-labels'], ['annotations', 'e-annotations']];

const IMAGE = ['err-e-image', 'e-image', 'e-envProcess'];
const errors = new FormErrors({
  image: IMAGE, envProcess: IMAGE,
  envVars: ['err-e-envVars', 'e-envVars'], labels: ['err-e-labels', 'e-labels'],
  annotations: ['err-e-annotations', 'e-annotations'], secrets: ['err-e-secrets', 'e-secrets'],
  limits: ['err-e-limits', 'e-memory', 'e-cpu'],
}, 'edit-error');

let refresh = async () => {};
// Bumped on every open and close, so an answer for an earlier opening is dropped.
let opened = 0;
// Whether the open dialog only shows the definition.
let readOnly = false;

// Whether a KEY=value line carries this entry unchanged (no line break, no '=' in the key,
// a key that is not blank and not read back as a # comment).
function lineSafe(k, v) {
  const key = k.trim();
  return key !== '' && !key.startsWith('#') && !k.includes('=') && !/[\r\n]/.test(k + v);
}

// Put `obj`'s entries in the textarea `id`; the ones a line cannot carry are returned, to be
// saved back unchanged.
function fillPairs(id, obj) {
  const lines = [];
  const hidden = {};
  for (const [k, v] of Object.entries(obj || {})) {
    if (lineSafe(k, v)) lines.push(`${k}=${v}`);
    else hidden[k] = v;
  }
  $(id).value = lines.join('\n');
  return hidden;
}

// The entries of the textarea `id`. A line that is a stored entry but for blanks around the
// key or value keeps the stored text, so what was not edited is saved exactly as it was.
function readPairs(id, field, stored, hidden) {
  const exact = new Map();
  for (const [k, v] of Object.entries(stored || {})) exact.set(k.trim() + '=' + v.trim(), [k, v]);
  const out = {};
  for (const [k, v] of Object.entries(parsePairs($(id).value, field))) {
    const [sk, sv] = exact.get(k + '=' + v) || [k, v];
    out[sk] = sv;
  }
  for (const [k, v] of Object.entries(hidden)) if (!Object.hasOwn(out, k)) out[k] = v;
  return out;
}

// The definition to PUT: the form's fields over the stored ones it does not show.
function definition() {
  const { fn, hidden } = st.editing;
  const d = { service: fn.name, image: $('e-image').value.trim() };
  if (fn.namespace) d.namespace = fn.namespace;
  const proc = $('e-envProcess').value.trim();
  if (proc) d.envProcess = proc;
  for (const [field, id] of PAIRS) {
    const pairs = readPairs(id, field, fn[field], hidden[field]);
    if (Object.keys(pairs).length) d[field] = pairs;
  }
  const secrets = $('e-secrets').value.split(/[\s,]+/).filter(Boolean);
  if (secrets.length) d.secrets = secrets;
  const memory = $('e-memory').value.trim();
  const cpu = $('e-cpu').value.trim();
  if (memory || cpu) d.limits = { memory, cpu };
  for (const k of KEPT) if (fn[k] !== undefined) d[k] = fn[k];
  return d;
}

function keptText(fn, hidden) {
  const kept = KEPT.filter((k) => fn[k] !== undefined);
  for (const [field, obj] of Object.entries(hidden)) {
    for (const k of Object.keys(obj)) kept.push(`${field} ${JSON.stringify(k)}`);
  }
  return kept.length ? 'Saved as deployed, not editable here: ' + kept.join(', ') + '.' : '';
}

// Show the stored definition `fn` in the form.
function fill(fn) {
  $('e-envProcess').value = fn.envProcess || '';
  $('e-image').value = fn.image || '';
  const hidden = {};
  for (const [field, id] of PAIRS) hidden[field] = fillPairs(id, fn[field]);
  $('e-secrets').value = (fn.secrets || []).join('\n');
  $('e-memory').value = (fn.limits || {}).memory || '';
  $('e-cpu').value = (fn.limits || {}).cpu || '';
  $('e-kept').textContent = readOnly ? '' : keptText(fn, hidden);
  st.editing = { name: fn.name, fn, hidden, base: '' };
  st.editing.base = JSON.stringify(definition());
  for (const e of $('edit-form').querySelectorAll('input, textarea')) e.readOnly = readOnly;
  $('edit-actions').hidden = readOnly;
  $('edit-loading').hidden = true;
  $('edit-form').hidden = false;
  $('scale-form').hidden = readOnly;
  showEditReplicas();
}

function clearMessages() {
  errors.clear();
  $('edit-ok').hidden = true;
  $('err-e-replicas').textContent = '';
  $('e-replicas').removeAttribute('aria-invalid');
  $('scale-ok').hidden = true;
}

// Open the dialog for function `name`, loading its definition; `view` only shows it.
export async function openEdit(name, view) {
  const seq = ++opened;
  st.editing = null;
  readOnly = !!view;
  clearMessages();
  $('edit-verb').textContent = readOnly ? 'Details of' : 'Edit';
  $('edit-name').textContent = name;
  $('edit-form').hidden = true;
  $('scale-form').hidden = true;
  $('edit-loading').hidden = false;
  $('edit-loading').textContent = `Loading ${name}…`;
  $('edit-dialog').showModal();
  try {
    const r = await api('GET', `/system/function/${encodeURIComponent(name)}?${nsQuery()}`);
    const text = r.ok ? null : await errorText(r);
    const fn = r.ok ? await r.json() : null;
    if (seq !== opened) return;
    if (!fn) {
      $('edit-loading').textContent = text;
      return;
    }
    fill(fn);
    $('e-replicas').value = String(fn.replicas);
  } catch (e) {
    if (seq === opened && e.status !== 401) {
      $('edit-loading').textContent = 'Could not reach the gateway: ' + e.message;
    }
  }
}

// The replicas line of the open dialog, from the latest function list.
export function showEditReplicas() {
  const ed = st.editing;
  if (!ed) return;
  const f = st.functions.find((x) => x.name === ed.name);
  const max = (ed.fn.labels || {})[SCALE_MAX];
  const limit = max ? `at most ${max} (its ${SCALE_MAX} label)` : `at most its ${SCALE_MAX} label (default 20)`;
  $('e-replicas-now').textContent = f
    ? `Now ${f.availableReplicas} ready of ${f.replicas} wanted; ${limit}.`
    : 'This function is not deployed any more.';
}

function ok(id, text) {
  $(id).hidden = false;
  $(id).textContent = text;
}

async function onSave(ev) {
  ev.preventDefault();
  const ed = st.editing;
  if (!ed || readOnly) return;
  clearMessages();
  let d;
  try {
    d = definition();
  } catch (e) {
    errors.show(e.field, e.message);
    return;
  }
  if (JSON.stringify(d) === ed.base) {
    ok('edit-ok', 'Nothing changed, so nothing was saved.');
    return;
  }
  const btn = $('edit-save');
  btn.disabled = true;
  btn.textContent = 'Saving…';
  try {
    const r = await api('PUT', '/system/functions', d);
    if (!r.ok) {
      errors.api(r.status, await errorText(r));
      return;
    }
    ed.base = JSON.stringify(d);
    ok('edit-ok', `Saved ${ed.name}: its instances restart with the new definition.`);
    const g = await api('GET', `/system/function/${encodeURIComponent(ed.name)}?${nsQuery()}`);
    const fn = g.ok ? await g.json() : null;
    if (fn && st.editing === ed) fill(fn);
    await refresh();
  } catch (e) {
    if (e.status !== 401) errors.api(0, 'Could not reach the gateway: ' + e.message);
  } finally {
    btn.disabled = false;
    btn.textContent = 'Save changes';
  }
}

function scaleError(message) {
  $('err-e-replicas').textContent = message;
  $('e-replicas').setAttribute('aria-invalid', 'true');
  $('e-replicas').focus();
}

async function onScale(ev) {
  ev.preventDefault();
  const ed = st.editing;
  if (!ed || readOnly) return;
  clearMessages();
  const text = $('e-replicas').value.trim();
  const replicas = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(replicas)) {
    scaleError('replicas: give a whole number of instances, 0 or more.');
    return;
  }
  const btn = $('scale-submit');
  btn.disabled = true;
  try {
    const path = '/system/scale-function/' + encodeURIComponent(ed.name);
    const namespace = ed.fn.namespace || st.ns;
    const r = await api('POST', path, { serviceName: ed.name, namespace, replicas });
    if (!r.ok) {
      scaleError(await errorText(r));
      return;
    }
    ok('scale-ok', `Asked for ${replicas} instance${replicas === 1 ? '' : 's'} of ${ed.name}.`);
    await refresh();
  } catch (e) {
    if (e.status !== 401) scaleError('Could not reach the gateway: ' + e.message);
  } finally {
    btn.disabled = false;
  }
}

// Wire the dialog; `refreshList` reloads the function list after a change.
export function initEdit(refreshList) {
  refresh = refreshList;
  errors.watch($('edit-form'));
  $('edit-form').addEventListener('submit', onSave);
  $('scale-form').addEventListener('submit', onScale);
  $('e-replicas').addEventListener('input', () => {
    $('err-e-replicas').textContent = '';
    $('e-replicas').removeAttribute('aria-invalid');
  });
  $('edit-close').addEventListener('click', () => $('edit-dialog').close());
  $('edit-dialog').addEventListener('close', () => {
    opened++;
    st.editing = null;
  });
}
