// Sign-in: the admin's user and password (HTTP basic auth) or an API token (Bearer), checked
// with GET /system/virga/whoami and kept in this tab's sessionStorage only.
import { $, errorText, HttpError } from './core.js';

const AUTH_KEY = 'virga.auth';

function basic(user, password) {
  const bytes = new TextEncoder().encode(user + ':' + password);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return 'Basic ' + btoa(bin);
}

function tokenMode() {
  return $('login-mode-token').checked;
}

function showMode() {
  const token = tokenMode();
  $('login-password-fields').hidden = token;
  $('login-token-fields').hidden = !token;
}

// The sign-in screen, with `message` (why) under the form's fields.
export function showLogin(message) {
  $('app').hidden = true;
  $('login').hidden = false;
  showMode();
  $('login-error').textContent = message || '';
  const input = tokenMode() ? $('login-token') : $('login-password');
  for (const id of ['login-password', 'login-token']) $(id).removeAttribute('aria-invalid');
  if (message) input.setAttribute('aria-invalid', 'true');
  input.focus();
}

// Who the Authorization header `auth` signs in as, and the gateway's info. A 401 throws
// `refused` if given, else the gateway's own message (it says what is wrong with a token).
async function check(auth, refused) {
  const get = (path) => fetch(path, {
    headers: { Authorization: auth }, credentials: 'omit', cache: 'no-store',
  });
  const r = await get('/system/virga/whoami');
  if (r.status === 401) throw new HttpError(401, refused || await errorText(r));
  if (!r.ok) throw new HttpError(r.status, await errorText(r));
  const me = await r.json();
  const i = await get('/system/info');
  if (!i.ok) throw new HttpError(i.status, await errorText(i));
  return { me, info: await i.json() };
}

// The form's credentials as an Authorization header, or null after saying what is missing.
function fromForm() {
  if (tokenMode()) {
    const token = $('login-token').value.trim();
    if (!token) showLogin('Paste an API token (`virga token create` prints one).');
    return token ? { auth: 'Bearer ' + token } : null;
  }
  const user = $('login-user').value.trim() || 'admin';
  const password = $('login-password').value;
  if (!password) showLogin('Enter the admin password.');
  return password ? { auth: basic(user, password), refused: 'Wrong user or password.' } : null;
}

async function onLogin(ev, start) {
  ev.preventDefault();
  const creds = fromForm();
  if (!creds) return;
  const btn = $('login-submit');
  btn.disabled = true;
  try {
    const { me, info } = await check(creds.auth, creds.refused);
    sessionStorage.setItem(AUTH_KEY, creds.auth);
    $('login-password').value = '';
    $('login-token').value = '';
    start(creds.auth, me, info);
  } catch (e) {
    showLogin(e instanceof HttpError ? e.message : 'Could not reach the gateway: ' + e.message);
  } finally {
    btn.disabled = false;
  }
}

// Drop the tab's saved credentials.
export function forgetLogin() {
  sessionStorage.removeItem(AUTH_KEY);
}

// Wire the form; `start(auth, me, info)` opens the console, from the form or from the tab's
// saved session.
export function initLogin(start) {
  $('login-form').addEventListener('submit', (ev) => onLogin(ev, start));
  for (const id of ['login-mode-password', 'login-mode-token']) {
    $(id).addEventListener('change', () => showLogin(''));
  }
  const saved = sessionStorage.getItem(AUTH_KEY);
  if (!saved) {
    showLogin('');
    return;
  }
  const bearer = saved.startsWith('Bearer ');
  $('login-mode-token').checked = bearer;
  $('login-mode-password').checked = !bearer;
  check(saved)
    .then(({ me, info }) => start(saved, me, info))
    .catch((e) => {
      forgetLogin();
      showLogin(e.status === 401 ? 'Your saved session is no longer valid: sign in again.' : e.message);
    });
}
