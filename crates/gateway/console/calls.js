// The calls in progress of the namespace shown (GET /system/virga/calls?namespace=NS): sync
// calls (a streamed answer until its last byte) and async deliveries, the longest-running
// first, refreshed with the function list.
import { $, el, api, clock, nsQuery } from './core.js';

// The list, or null when the gateway would not give it.
export async function loadCalls() {
  const r = await api('GET', '/system/virga/calls?' + nsQuery());
  return r.ok ? r.json() : null;
}

// "3.4 s", "2 min 03 s", "1 h 02 min".
function elapsed(secs) {
  const s = Math.floor(secs);
  if (s < 60) return secs.toFixed(1) + ' s';
  const two = (n) => String(n).padStart(2, '0');
  if (s < 3600) return Math.floor(s / 60) + ' min ' + two(s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + two(Math.floor(s / 60) % 60) + ' min';
}

// Show `list` (null: unavailable, shown as none).
export function renderCalls(list) {
  const calls = list || [];
  $('calls-rows').replaceChildren(...calls.map((c) => el('tr', { 'data-call': c.callId },
    el('td', { class: 'name', text: c.function }),
    el('td', { text: c.kind }),
    el('td', { class: 'mono', text: c.method + ' ' + c.path }),
    el('td', { class: 'mono', text: c.callId }),
    el('td', { class: 'mono', text: c.instance || 'waiting for one' }),
    el('td', { text: clock(new Date(c.started)) }),
    el('td', { class: 'num elapsed', text: elapsed(c.elapsedSeconds) }))));
  $('calls-table').hidden = calls.length === 0;
  $('calls-empty').hidden = calls.length > 0;
  $('calls-summary').textContent = calls.length ? `${calls.length} running` : '';
}
