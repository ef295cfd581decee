// The namespace switcher: the namespaces the caller may see (GET /system/namespaces, which the
// gateway filters), the one shown kept in this tab's sessionStorage and in the page's address
// (#namespace=NS), so a reload or a shared link shows the same one.
import { $, st, el, api, errorText, HttpError, DEFAULT_NS } from './core.js';

const NS_KEY = 'virga.namespace';

// The namespace the address names, if any.
export function namespaceInAddress() {
  const m = /^#namespace=([a-z0-9-]+)$/.exec(location.hash);
  return m ? m[1] : null;
}

// Reload the list into the select.
export async function loadNamespaces() {
  const r = await api('GET', '/system/namespaces');
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
  st.namespaces = await r.json();
  fillSwitcher();
}

// The select's options: the caller's namespaces, and the one shown if it is not one of them
// (gone, or named by the address), marked so, so the select never claims another one.
function fillSwitcher() {
  const want = st.namespaces.map((n) => [n, n]);
  if (!st.namespaces.includes(st.ns)) want.push([st.ns, st.ns + ' (not available)']);
  const sel = $('ns-select');
  const have = Array.from(sel.options).map((o) => [o.value, o.textContent]);
  const same = have.length === want.length &&
    have.every(([v, t], i) => v === want[i][0] && t === want[i][1]);
  if (!same) {
    sel.replaceChildren(...want.map(([value, text]) => el('option', { value, text })));
  }
  sel.value = st.ns;
}

// The namespace to show first: the address's (even one the caller may not see: the gateway's
// answer then says why), else this tab's last, else the default, else the first the caller
// may see.
export function firstNamespace() {
  const wanted = [sessionStorage.getItem(NS_KEY), DEFAULT_NS];
  return namespaceInAddress() || wanted.find((n) => n && st.namespaces.includes(n)) ||
    st.namespaces[0] || DEFAULT_NS;
}

// Forget the namespace shown, for the next sign-in.
export function forgetNamespace() {
  sessionStorage.removeItem(NS_KEY);
  history.replaceState(null, '', location.pathname);
  document.title = 'Virga console';
}

// Show namespace `ns`: remembered, in the address, the title and every `.ns-name`.
export function setNamespace(ns) {
  st.ns = ns;
  sessionStorage.setItem(NS_KEY, ns);
  history.replaceState(null, '', '#namespace=' + ns);
  document.title = ns + ' · Virga console';
  fillSwitcher();
  for (const e of document.querySelectorAll('.ns-name')) e.textContent = ns;
}
