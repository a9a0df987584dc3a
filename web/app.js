// Tessera's end-user page: sign up, log in with a second factor, manage MFA.
//
// A static page over the JSON API: every call is a same-origin `fetch` carrying the
// `__Host-tessera_session` cookie that the login endpoints set (HttpOnly, so this script never
// sees the token). The browser adds `Sec-Fetch-Site: same-origin`, which the API requires of
// state-changing cookie requests. Rules stay on the server; this file only shows its answers.
//
// Safety rules kept throughout: text from the server or the user is written with
// `textContent` only (never `innerHTML`); the TOTP secret and backup codes live in this
// module's memory and the DOM of their screen, never in storage or a URL, and are dropped when
// the screen is left; error texts are the problem's `detail` and `details`.

const $ = (id) => document.getElementById(id);
const product = $('product').textContent;

/** A problem answer of the API (RFC 7807), or a network failure (status 0). */
class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.title || `Request failed (${status}).`);
    this.status = status;
    this.type = body.type || '';
    this.title = body.title || this.message;
    this.details = body.details || {};
    this.retryAfter = retryAfter;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, { detail: 'The server could not be reached. Check the connection and try again.' });
  }
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retryAfter = Number(response.headers.get('retry-after')) || Number(data.retry_after) || 0;
    throw new ApiError(response.status, data, retryAfter);
  }
  return data;
}

// ---- screens ---------------------------------------------------------------------------------

let signedIn = null; // the profile {id, email, mfa_enabled, created_at} while signed in

function show(name) {
  for (const screen of document.querySelectorAll('.screen')) screen.hidden = screen.id !== `screen-${name}`;
  const heading = $(`screen-${name}`).querySelector('h1');
  document.title = heading ? `${heading.textContent} · ${product}` : product;
  $('whoami').hidden = $('logout').hidden = !signedIn;
  $('whoami').textContent = signedIn ? signedIn.email : '';
  if (heading) heading.focus();
}

function say(element, text) {
  element.textContent = text;
}

/** Logged out: the log-in or sign-up screen, as the address's fragment says. */
function showSignedOut(notice = '') {
  signedIn = null;
  forgetSecrets();
  say($('login-notice'), notice);
  show(location.hash === '#signup' ? 'signup' : 'login');
}

window.addEventListener('hashchange', () => {
  if (!signedIn) showSignedOut();
});

/** Calls of a signed-in screen: a 401 means the session is gone, so back to the log-in. */
async function authed(method, path, body) {
  try {
    return await api(method, path, body);
  } catch (error) {
    if (error.status === 401) {
      error.sessionEnded = true;
      showSignedOut('Your session has ended. Please log in again.');
    }
    throw error;
  }
}

// ---- forms -----------------------------------------------------------------------------------

function clearErrors(form) {
  say(form.querySelector('.form-error'), '');
  for (const input of form.querySelectorAll('input')) {
    input.removeAttribute('aria-invalid');
    const error = $(`${input.id}-error`);
    if (error) say(error, '');
  }
}

function sentence(text) {
  const trimmed = String(text).trim();
  return trimmed.charAt(0).toUpperCase() + trimmed.slice(1) + (/[.!?]$/.test(trimmed) ? '' : '.');
}

function fieldError(form, name, text) {
  const input = form.elements.namedItem(name);
  const error = input && $(`${input.id}-error`);
  if (!error || input.closest('[hidden]')) return false;
  say(error, sentence(text));
  input.setAttribute('aria-invalid', 'true');
  return true;
}

/**
 * Shows a problem on its form: each member of `details` next to its field, and the `detail`
 * at the top of the form unless it is already said next to a field. `codeField` names the field
 * a wrong code belongs to.
 */
function showProblem(form, error, { codeField = null } = {}) {
  let placed = false;
  for (const [member, text] of Object.entries(error.details)) {
    const name = ['totp_code', 'mfa_code', 'otp'].includes(member) ? 'code' : member;
    placed = fieldError(form, name, text) || placed;
  }
  const wrongCode = ['/problems/invalid-mfa-code', '/problems/invalid-second-factor'].includes(error.type);
  if (codeField && wrongCode) placed = fieldError(form, codeField, error.message) || placed;
  // A 429's detail names the wait at the time of the answer; the countdown below keeps it current.
  const summary = error.status === 429 && error.retryAfter > 0 ? sentence(error.title) : error.message;
  if (!placed) say(form.querySelector('.form-error'), summary);
  const invalid = form.querySelector('[aria-invalid="true"]');
  if (invalid) invalid.focus();
  if (error.status === 429 && error.retryAfter > 0) startCountdown(form, error.retryAfter);
}

/** A 429: the submit button stays disabled, with a visible countdown, until `Retry-After` ends. */
function startCountdown(form, seconds) {
  const button = form.querySelector('button[type="submit"]');
  const line = form.querySelector('.countdown');
  const until = Date.now() + seconds * 1000;
  clearInterval(form.countdownTimer);
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left <= 0) {
      clearInterval(form.countdownTimer);
      form.countdownTimer = undefined;
      line.hidden = true;
      button.disabled = false;
      return;
    }
    button.disabled = true;
    line.hidden = false;
    say(line, `You can try again in ${left} second${left === 1 ? '' : 's'}.`);
  };
  tick();
  form.countdownTimer = setInterval(tick, 250);
}

/** Runs `handler(values)` on submit, one request at a time, showing its problem if it fails. */
function onSubmit(form, handler, options = {}) {
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button[type="submit"]');
    if (button.disabled) return;
    clearErrors(form);
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    try {
      await handler(Object.fromEntries(new FormData(form)));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (!error.sessionEnded) showProblem(form, error, options);
    } finally {
      form.removeAttribute('aria-busy');
      if (form.countdownTimer === undefined) button.disabled = false;
    }
  });
}

// ---- log in and sign up ----------------------------------------------------------------------

let mfaToken = null;
let backupCodeMode = false;

onSubmit($('login-form'), async ({ email, password }) => {
  const answer = await api('POST', '/api/auth/login', { email, password });
  $('login-form').reset();
  if (answer.mfa_required) {
    mfaToken = answer.mfa_token;
    setCodeMode(false);
    show('second-factor');
  } else {
    await enterAfterLogin();
  }
});

onSubmit(
  $('second-factor-form'),
  async ({ code }) => {
    try {
      await api('POST', '/api/auth/login/mfa', { mfa_token: mfaToken, code });
    } catch (error) {
      if (error.type === '/problems/invalid-mfa-token') {
        mfaToken = null;
        showSignedOut('The sign-in took too long. Please log in again.');
        return;
      }
      throw error;
    }
    mfaToken = null;
    $('second-factor-form').reset();
    await enterAfterLogin();
  },
  { codeField: 'code' },
);

function setCodeMode(backup) {
  backupCodeMode = backup;
  const input = $('second-factor-code');
  input.value = '';
  input.inputMode = backup ? 'text' : 'numeric';
  input.autocomplete = backup ? 'off' : 'one-time-code';
  input.autocapitalize = 'none';
  input.spellcheck = false;
  say(
    $('second-factor-hint'),
    backup
      ? 'Enter one of your backup codes, like abcd-efgh-jkmnp. Each code works once.'
      : 'Enter the 6-digit code from your authenticator app.',
  );
  say($('second-factor-method'), backup ? 'Use a code from the app' : 'Use a backup code');
  clearErrors($('second-factor-form'));
}

$('second-factor-method').addEventListener('click', () => {
  setCodeMode(!backupCodeMode);
  $('second-factor-code').focus();
});

$('second-factor-cancel').addEventListener('click', () => {
  mfaToken = null;
  showSignedOut();
});

onSubmit($('signup-form'), async ({ email, password }) => {
  await api('POST', '/api/auth/register', { email, password });
  // The account exists; sign straight in with what was just typed (MFA is off on a new account).
  const answer = await api('POST', '/api/auth/login', { email, password });
  $('signup-form').reset();
  history.replaceState(null, '', location.pathname);
  if (answer.token) await enterAfterLogin('Your account is ready. Two-factor authentication protects it even if your password leaks: set it up below.');
});

$('logout').addEventListener('click', async () => {
  try {
    await api('POST', '/api/auth/logout');
  } catch (error) {
    // A session that already ended is as logged out as it gets; anything else is worth saying.
    if (error.status !== 401) {
      say($('account-notice'), error.message);
      return;
    }
  }
  history.replaceState(null, '', location.pathname);
  showSignedOut('You are logged out.');
});

// ---- account security ------------------------------------------------------------------------

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const formatTime = (iso) => (iso ? dateTime.format(new Date(iso)) : '');

/** The account screen, shown once its data is in (no flash of empty values). */
async function enterAccount(notice = '') {
  signedIn = await authed('GET', '/api/user/profile');
  closePanels();
  await refreshAccount();
  say($('account-notice'), notice);
  show('account');
}

/**
 * Right after a successful log-in. A 401 now means the browser did not keep the `Secure`
 * cookie, which happens when the page is served over plain http from anywhere but loopback.
 */
async function enterAfterLogin(notice = '') {
  try {
    signedIn = await api('GET', '/api/user/profile');
  } catch (error) {
    if (error.status !== 401) throw error;
    showSignedOut();
    say(
      $('login-form').querySelector('.form-error'),
      'You were logged in, but this browser did not keep the session cookie. Open this page over https:// (or on localhost).',
    );
    return;
  }
  await enterAccount(notice);
}

/** From a sub-screen back to the account; a failure other than an ended session is said there. */
function backToAccount() {
  enterAccount().catch((error) => {
    if (!error.sessionEnded) say($('account-notice'), error.message);
  });
}

async function refreshAccount() {
  const [status, events] = await Promise.all([
    authed('GET', '/api/user/profile/mfa'),
    authed('GET', '/api/user/profile/security-events?limit=20'),
  ]);
  signedIn.mfa_enabled = status.enabled;
  renderMfa(status);
  renderEvents(events.events);
  await refreshSessions();
}

function renderMfa(status) {
  say($('mfa-status'), status.enabled ? 'On' : 'Off');
  $('mfa-status').className = status.enabled ? 'badge on' : 'badge off';
  $('mfa-enabled-at-row').hidden = !status.enabled;
  $('mfa-remaining-row').hidden = !status.enabled;
  say($('mfa-enabled-at'), formatTime(status.enabled_at));
  const left = status.backup_codes_remaining;
  say($('mfa-remaining'), String(left));
  const warning = $('mfa-codes-warning');
  warning.hidden = !(status.enabled && left <= 3);
  say(
    warning,
    left === 0
      ? 'You have no backup codes left. Regenerate them now, or you can lose access if you lose your phone.'
      : `Only ${left} backup code${left === 1 ? '' : 's'} left. Regenerate your backup codes soon.`,
  );
  $('mfa-actions-off').hidden = status.enabled;
  $('mfa-actions-on').hidden = !status.enabled;
  $('password-code-field').hidden = !status.enabled;
  $('password-code').required = status.enabled;
}

const EVENT_NAMES = {
  user_registered: 'Account created',
  login_succeeded: 'Logged in',
  login_failed: 'Failed log-in',
  login_password_ok_mfa_required: 'Password accepted, code requested',
  login_refused_disabled: 'Log-in refused: account disabled',
  logout: 'Logged out',
  password_changed: 'Password changed',
  password_change_failed: 'Password change failed',
  mfa_setup_started: 'Two-factor setup started',
  mfa_setup_failed: 'Two-factor setup: wrong code',
  mfa_enabled: 'Two-factor authentication enabled',
  second_factor_failed: 'Wrong code entered',
  mfa_lockout: 'Too many wrong codes: locked for a while',
  backup_code_used: 'Backup code used',
  backup_codes_regenerated: 'Backup codes regenerated',
  mfa_disabled: 'Two-factor authentication disabled',
  mfa_reset_by_operator: 'Two-factor reset by an administrator',
  account_disabled_by_operator: 'Account disabled by an administrator',
  account_enabled_by_operator: 'Account enabled by an administrator',
};

function cell(row, label, text, className) {
  const td = row.insertCell();
  td.dataset.label = label;
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function renderEvents(events) {
  const body = $('events-body');
  body.replaceChildren();
  if (events.length === 0) {
    cell(body.insertRow(), 'Event', 'No events yet.').colSpan = 4;
    return;
  }
  for (const event of events) {
    const row = body.insertRow();
    cell(row, 'Event', EVENT_NAMES[event.type] || event.type);
    const time = document.createElement('time');
    time.dateTime = event.at;
    time.textContent = formatTime(event.at);
    cell(row, 'Time', '', 'when').append(time);
    cell(row, 'Address', event.ip || 'unknown');
    cell(row, 'User agent', event.user_agent || 'unknown', 'agent');
  }
}

// The sessions list appears once the server offers `GET /api/user/profile/sessions` (API.md);
// on a server without it the probe answers 404 and the section stays hidden.
async function refreshSessions() {
  let answer;
  try {
    answer = await authed('GET', '/api/user/profile/sessions');
  } catch (error) {
    if (error.status === 404) {
      $('sessions-card').hidden = true;
      return;
    }
    throw error;
  }
  const list = $('sessions-list');
  list.replaceChildren();
  for (const session of answer.sessions) {
    const item = document.createElement('li');
    const text = document.createElement('p');
    const current = session.current ? ' (this browser)' : '';
    text.textContent = `${session.user_agent || 'Unknown browser'}${current}, from ${session.ip || 'an unknown address'}, last active ${formatTime(session.last_seen_at)}`;
    item.append(text);
    if (!session.current) {
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'secondary';
      button.textContent = 'Sign out';
      button.setAttribute('aria-label', `Sign out ${session.user_agent || 'unknown browser'} last active ${formatTime(session.last_seen_at)}`);
      button.addEventListener('click', async () => {
        button.disabled = true;
        let outcome = 'That session is signed out.';
        try {
          await authed('DELETE', `/api/user/profile/sessions/${encodeURIComponent(session.id)}`);
        } catch (error) {
          if (error.sessionEnded) return;
          outcome = error.message;
        }
        await refreshSessions();
        say($('account-notice'), outcome);
      });
      item.append(button);
    }
    list.append(item);
  }
  $('sessions-card').hidden = false;
}

// One action panel (regenerate, disable, change password) open at a time.
function closePanels() {
  for (const opener of document.querySelectorAll('[data-opens]')) {
    const panel = $(opener.dataset.opens);
    panel.hidden = true;
    panel.reset();
    clearErrors(panel);
    opener.setAttribute('aria-expanded', 'false');
  }
}

for (const opener of document.querySelectorAll('[data-opens]')) {
  opener.addEventListener('click', () => {
    const panel = $(opener.dataset.opens);
    const wasOpen = !panel.hidden;
    closePanels();
    if (wasOpen) return;
    panel.hidden = false;
    opener.setAttribute('aria-expanded', 'true');
    say($('account-notice'), '');
    panel.querySelector('input').focus();
  });
}

for (const closer of document.querySelectorAll('[data-closes]')) {
  closer.addEventListener('click', () => {
    const opener = document.querySelector(`[data-opens="${closer.form.id}"]`);
    closePanels();
    opener.focus();
  });
}

onSubmit($('regenerate-form'), async ({ password, code }) => {
  const answer = await authed('POST', '/api/user/profile/mfa/backup-codes', { password, code });
  closePanels();
  showCodes(
    answer.backup_codes,
    'New backup codes are ready. All of your earlier codes stopped working, and your other sessions were signed out.',
  );
});

onSubmit($('disable-form'), async ({ password, code }) => {
  await authed('POST', '/api/user/profile/mfa/disable', { password, code });
  closePanels();
  await refreshAccount();
  say(
    $('account-notice'),
    'Two-factor authentication is off. Your authenticator key and backup codes were deleted, and your other sessions were signed out.',
  );
  $('account-title').focus();
});

onSubmit($('password-form'), async (values) => {
  const body = { current_password: values.current_password, new_password: values.new_password };
  if (signedIn.mfa_enabled) body.code = values.code;
  await authed('POST', '/api/user/profile/password', body);
  closePanels();
  await refreshAccount();
  const used = signedIn.mfa_enabled ? ' If you entered a backup code, it is used up.' : '';
  say($('account-notice'), `Your password is changed. Your other sessions were signed out.${used}`);
  $('account-title').focus();
});

// ---- MFA setup -------------------------------------------------------------------------------

let qrUrl = null; // the blob: URL of the QR code image
let codes = []; // the backup codes on the codes screen

/** Drops the secret and the codes from the page: they must not outlive their screen. */
function forgetSecrets() {
  if (qrUrl) URL.revokeObjectURL(qrUrl);
  qrUrl = null;
  $('setup-qr').removeAttribute('src');
  say($('setup-secret'), '');
  $('setup-details').hidden = true;
  $('setup-password-form').hidden = false;
  for (const form of [$('setup-password-form'), $('setup-verify-form')]) {
    form.reset();
    clearErrors(form);
  }
  say($('setup-copy-status'), '');
  codes = [];
  $('codes-list').replaceChildren();
  say($('codes-action-status'), '');
}

$('mfa-setup-start').addEventListener('click', () => {
  forgetSecrets();
  show('setup');
  $('setup-password').focus();
});

for (const back of document.querySelectorAll('[data-back]')) {
  back.addEventListener('click', () => {
    forgetSecrets();
    backToAccount();
  });
}

onSubmit($('setup-password-form'), async ({ password }) => {
  const setup = await authed('POST', '/api/user/profile/mfa/setup', { password });
  $('setup-password-form').reset();
  // The SVG becomes an image through a blob: URL: an <img> never runs script, and the CSP
  // allows images from blob: only.
  qrUrl = URL.createObjectURL(new Blob([setup.qr_code_svg], { type: 'image/svg+xml' }));
  const qr = $('setup-qr');
  qr.src = qrUrl;
  qr.alt = `QR code for ${setup.issuer}: ${setup.account_name}`;
  say($('setup-secret'), setup.secret.match(/.{1,4}/g).join(' '));
  say($('setup-issuer'), setup.issuer);
  say($('setup-account'), setup.account_name);
  say($('setup-type'), `Time-based (TOTP), ${setup.algorithm}, ${setup.digits} digits, every ${setup.period} seconds`);
  say($('setup-expiry'), `This setup expires at ${formatTime(setup.expires_at)}.`);
  $('setup-password-form').hidden = true;
  $('setup-details').hidden = false;
  $('setup-code').focus();
});

$('setup-copy-secret').addEventListener('click', () =>
  copy($('setup-secret').textContent.replaceAll(' ', ''), $('setup-copy-status'), 'Key copied.'),
);

onSubmit(
  $('setup-verify-form'),
  async ({ code }) => {
    const answer = await authed('POST', '/api/user/profile/mfa/verify', { code });
    showCodes(answer.backup_codes, 'Two-factor authentication is on. Your other sessions were signed out.');
  },
  { codeField: 'code' },
);

// ---- backup codes, shown once ----------------------------------------------------------------

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

function showCodes(list, notice) {
  forgetSecrets();
  codes = list;
  const items = list.map((code) => {
    const item = document.createElement('li');
    const text = document.createElement('code');
    text.textContent = code;
    item.append(text);
    return item;
  });
  $('codes-list').replaceChildren(...items);
  say($('codes-caption'), `${product} backup codes for ${signedIn.email}, ${today()}`);
  say($('codes-notice'), notice);
  show('codes');
}

function codesText() {
  return [
    `${product} backup codes for ${signedIn.email}`,
    `Created ${today()}. Each code works once.`,
    '',
    ...codes,
    '',
  ].join('\n');
}

async function copy(text, statusLine, done) {
  try {
    await navigator.clipboard.writeText(text);
    say(statusLine, done);
  } catch {
    say(statusLine, 'Copying is not allowed here; select the text and copy it instead.');
  }
}

$('codes-copy').addEventListener('click', () => copy(codesText(), $('codes-action-status'), 'Codes copied.'));

$('codes-download').addEventListener('click', () => {
  const url = URL.createObjectURL(new Blob([codesText()], { type: 'text/plain;charset=utf-8' }));
  const link = document.createElement('a');
  link.href = url;
  link.download = `${product}-backup-codes-${signedIn.email}-${today()}.txt`.replace(/[^\w@.+-]+/g, '-');
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
  say($('codes-action-status'), 'Codes downloaded.');
});

$('codes-print').addEventListener('click', () => window.print());

$('codes-done').addEventListener('click', () => {
  forgetSecrets();
  backToAccount();
});

// ---- start -----------------------------------------------------------------------------------

// A valid session cookie leads to the account screen, anything else to the log-in.
try {
  signedIn = await api('GET', '/api/user/profile');
} catch (error) {
  showSignedOut(error.status === 401 ? '' : error.message);
}
if (signedIn) backToAccount();
