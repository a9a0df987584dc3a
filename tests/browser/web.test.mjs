// The web page in a real browser: Debian's chromium driven by playwright-core against the
// served binary. One user's journey runs in order (each step starts where the last ended), then
// the throttled log-in and the 360 px layout on instances of their own. Every screen is checked
// with axe-core (no serious or critical violations) and photographed into output/.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import {
  freshCode,
  hotp,
  launchChromium,
  nowSeconds,
  openPage,
  OUTPUT,
  screenshot,
  seriousViolations,
  startTessera,
  step,
  totp,
} from './harness.mjs';

const PASSWORD = 'correct horse battery staple';
const NEW_PASSWORD = 'tessera mosaic of small stones';

/** Axe finds nothing serious, nothing broke the CSP, and the screen is photographed. */
async function checkScreen(page, name) {
  assert.deepEqual(await seriousViolations(page), [], `axe on ${name}`);
  assert.deepEqual(page.problems, [], `CSP or script errors on ${name}`);
  await screenshot(page, name);
}

const heading = (page) => page.getByRole('heading', { level: 1 });
const button = (page, name) => page.getByRole('button', { name, exact: true });
// Every screen is in the one document (the others hidden), so several inputs share a label.
const field = (page, label) =>
  page.getByLabel(label, { exact: true }).and(page.locator('input')).filter({ visible: true });

async function apiLogin(base, email, password) {
  const response = await fetch(`${base}/api/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password }),
  });
  return response.json();
}

test('the TOTP generator of this suite matches RFC 6238 (SHA1, Appendix B)', () => {
  const key = Buffer.from('12345678901234567890');
  assert.equal(hotp(key, step(59), 8), '94287082');
  assert.equal(hotp(key, step(1111111109), 8), '07081804');
  assert.equal(hotp(key, step(20000000000), 8), '65353130');
  assert.equal(totp('GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', step(59)), '287082');
});

describe('a user in the browser', () => {
  const email = `alice.${Date.now()}@example.com`;
  let browser;
  let server;
  let page;
  let secret;
  let lastStep = 0;
  let codes = [];

  before(async () => {
    browser = await launchChromium();
    server = await startTessera();
    page = await openPage(browser, server.base, { acceptDownloads: true });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('GET / is the log-in page, served with a strict CSP', async () => {
    const response = await page.goto(server.base);
    const headers = response.headers();
    assert.match(headers['content-security-policy'], /default-src 'self'/);
    assert.match(headers['content-security-policy'], /frame-ancestors 'none'/);
    assert.doesNotMatch(headers['content-security-policy'], /unsafe-inline/);
    assert.equal(headers['referrer-policy'], 'no-referrer');
    await assert.doesNotReject(heading(page).filter({ hasText: 'Log in' }).waitFor());
    await checkScreen(page, '01-log-in');
  });

  test('create account: the rules show before submitting, the problem details after', async () => {
    await page.getByRole('link', { name: 'Create an account' }).click();
    await heading(page).filter({ hasText: 'Create account' }).waitFor();
    const password = field(page, 'Password');
    assert.match(await password.getAttribute('autocomplete'), /new-password/);
    const rules = page.locator(`#${(await password.getAttribute('aria-describedby')).split(' ')[0]}`);
    assert.match(await rules.textContent(), /8 to 256 characters/);
    assert.ok(await rules.isVisible());

    await field(page, 'Email').fill(email);
    await password.fill('short');
    await button(page, 'Create account').click();
    const error = page.locator('#signup-password-error');
    await error.filter({ hasText: 'at least 8 characters' }).waitFor();
    assert.equal(await password.getAttribute('aria-invalid'), 'true');
    await checkScreen(page, '02-create-account-error');

    await password.fill(PASSWORD);
    await button(page, 'Create account').click();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.equal(await page.locator('#mfa-status').textContent(), 'Off');

    // The __Host- cookie is Secure; Chromium keeps it over http://127.0.0.1 (a secure context).
    const cookies = await page.context().cookies();
    const session = cookies.find((cookie) => cookie.name === '__Host-tessera_session');
    assert.ok(session, 'the session cookie is stored');
    assert.equal(session.secure, true);
    assert.equal(session.httpOnly, true);
    assert.equal(session.sameSite, 'Strict');
    await checkScreen(page, '03-account-mfa-off');
  });

  test('GET / with a valid session cookie leads to the account page', async () => {
    await page.reload();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.equal(await page.locator('#whoami').textContent(), email);
  });

  test('set up MFA: the page shows QR code, key, issuer and account; a wrong code keeps it open', async () => {
    await button(page, 'Set up two-factor authentication').click();
    await heading(page).filter({ hasText: 'Set up two-factor authentication' }).waitFor();
    await checkScreen(page, '04-setup-password');
    await field(page, 'Password').fill(PASSWORD);
    await button(page, 'Continue').click();

    const qr = page.getByRole('img', { name: /QR code/ });
    await qr.waitFor();
    assert.ok(await qr.evaluate((image) => image.complete && image.naturalWidth > 0), 'the QR code renders');
    const shown = (await page.locator('#setup-secret').textContent()).trim();
    assert.match(shown, /^([A-Z2-7]{4} )+[A-Z2-7]{1,4}$/, 'the key in groups of four');
    secret = shown.replaceAll(' ', '');
    assert.equal(await page.locator('#setup-issuer').textContent(), 'Tessera');
    assert.equal(await page.locator('#setup-account').textContent(), email);
    const code = field(page, 'Code');
    assert.equal(await code.getAttribute('inputmode'), 'numeric');
    assert.equal(await code.getAttribute('autocomplete'), 'one-time-code');

    await button(page, 'Copy key').click();
    await page.locator('#setup-copy-status').filter({ hasText: 'copied' }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);

    const now = step(nowSeconds());
    const wrong = ['000000', '111111', '222222'].find((c) => ![-1, 0, 1].some((d) => totp(secret, now + d) === c));
    await code.fill(wrong);
    await button(page, 'Enable').click();
    await page.locator('#setup-code-error').filter({ hasText: 'not valid' }).waitFor();
    assert.equal(await code.getAttribute('aria-invalid'), 'true');
    assert.ok(await qr.isVisible(), 'the setup stays open');
    await checkScreen(page, '05-setup-wrong-code');

    let fresh;
    [fresh, lastStep] = await freshCode(secret, 0);
    await code.fill(fresh);
    await button(page, 'Enable').click();
    await heading(page).filter({ hasText: 'Save your backup codes' }).waitFor();
  });

  test('backup codes: shown once with copy, download and a print sheet of only the codes', async () => {
    codes = await page.locator('#codes-list code').allTextContents();
    assert.equal(codes.length, 10);
    for (const code of codes) assert.match(code, /^[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{5}$/);
    await checkScreen(page, '06-backup-codes');

    await button(page, 'Copy').click();
    await page.locator('#codes-action-status').filter({ hasText: 'copied' }).waitFor();
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    for (const code of codes) assert.ok(copied.includes(code));

    const [download] = await Promise.all([page.waitForEvent('download'), button(page, 'Download').click()]);
    const today = new Date();
    const date = `${today.getFullYear()}-${String(today.getMonth() + 1).padStart(2, '0')}-${String(today.getDate()).padStart(2, '0')}`;
    assert.match(download.suggestedFilename(), /\.txt$/);
    assert.ok(download.suggestedFilename().includes(email), download.suggestedFilename());
    assert.ok(download.suggestedFilename().includes(date), download.suggestedFilename());
    const file = await readFile(await download.path(), 'utf8');
    assert.ok(file.includes(email) && file.includes(date));
    for (const code of codes) assert.ok(file.includes(code));

    await page.emulateMedia({ media: 'print' });
    assert.ok(await page.locator('#codes-list').isVisible());
    for (const hidden of ['.topbar', '#codes-title', '#codes-copy', '#codes-done']) {
      assert.equal(await page.locator(hidden).isVisible(), false, `${hidden} is not printed`);
    }
    await screenshot(page, '07-backup-codes-print');
    await page.emulateMedia({ media: 'screen' });

    for (const storage of ['localStorage', 'sessionStorage']) {
      assert.equal(await page.evaluate((name) => window[name].length, storage), 0, `${storage} stays empty`);
    }
    assert.ok(!page.url().includes(secret) && !codes.some((code) => page.url().includes(code)));
  });

  test('reloading never shows the codes again; the account shows MFA on with 10 codes', async () => {
    await page.reload();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    const html = await page.content();
    for (const code of codes) assert.ok(!html.includes(code), 'no code after a reload');
    assert.ok(!html.includes(secret), 'no secret after a reload');
    for (const url of page.requestedUrls) {
      assert.ok(!url.startsWith('http') || url.startsWith(server.base), `only our own origin: ${url}`);
      const plain = decodeURIComponent(url).toLowerCase();
      assert.ok(![secret.toLowerCase(), ...codes].some((value) => plain.includes(value)), `no secret in ${url}`);
    }
    assert.equal(await page.locator('#mfa-status').textContent(), 'On');
    assert.equal(await page.locator('#mfa-remaining').textContent(), '10');
    assert.notEqual(await page.locator('#mfa-enabled-at').textContent(), '');
    const events = await page.locator('#events-body tr').allTextContents();
    assert.ok(events.some((row) => row.includes('Two-factor authentication enabled')), events.join('\n'));
    assert.ok(events.some((row) => row.includes('127.0.0.1')));
    await checkScreen(page, '08-account-security');
    // The README's picture (docs/account-security.png is a copy): the top of the screen, small.
    await page.setViewportSize({ width: 880, height: 700 });
    await page.screenshot({ path: `${OUTPUT}/account-security.png` });
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  test('log out, then log in with the keyboard alone and a TOTP code', async () => {
    await button(page, 'Log out').click();
    await heading(page).filter({ hasText: 'Log in' }).waitFor();
    const cookies = await page.context().cookies();
    assert.ok(!cookies.some((cookie) => cookie.name === '__Host-tessera_session'), 'the cookie is cleared');

    await page.locator('#login-title').focus();
    await page.keyboard.press('Tab');
    const focus = await page.evaluate(() => {
      const style = getComputedStyle(document.activeElement);
      return { id: document.activeElement.id, outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
    });
    assert.equal(focus.id, 'login-email');
    assert.ok(focus.outline !== 'none' && focus.width >= 2, `visible focus: ${JSON.stringify(focus)}`);
    await page.keyboard.type(email);
    await page.keyboard.press('Tab');
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press('Enter');
    await heading(page).filter({ hasText: 'Two-factor authentication' }).waitFor();
    await checkScreen(page, '09-second-factor');

    const now = step(nowSeconds());
    const wrong = ['000000', '111111', '222222'].find((c) => ![-1, 0, 1].some((d) => totp(secret, now + d) === c));
    await field(page, 'Code').fill(wrong);
    await page.keyboard.press('Enter');
    await page.locator('#second-factor-code-error').filter({ hasText: 'not valid' }).waitFor();

    let code;
    [code, lastStep] = await freshCode(secret, lastStep);
    await field(page, 'Code').fill(code);
    await page.keyboard.press('Enter');
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
  });

  test('log in with a backup code: the remaining count drops, and a warning shows at 3', async () => {
    await button(page, 'Log out').click();
    await field(page, 'Email').fill(email);
    await field(page, 'Password').fill(PASSWORD);
    await button(page, 'Log in').click();
    await button(page, 'Use a backup code').click();
    const code = field(page, 'Code');
    assert.equal(await code.getAttribute('inputmode'), 'text');
    await code.fill(codes[0].toUpperCase());
    await checkScreen(page, '10-second-factor-backup-code');
    await button(page, 'Verify').click();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.equal(await page.locator('#mfa-remaining').textContent(), '9');
    assert.ok(!(await page.locator('#mfa-codes-warning').isVisible()));

    // Six more codes used elsewhere (through the API), then the page warns.
    for (const used of codes.slice(1, 7)) {
      const { mfa_token } = await apiLogin(server.base, email, PASSWORD);
      const response = await fetch(`${server.base}/api/auth/login/mfa`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ mfa_token, code: used }),
      });
      assert.equal(response.status, 200);
    }
    await page.reload();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.equal(await page.locator('#mfa-remaining').textContent(), '3');
    await page.locator('#mfa-codes-warning').filter({ hasText: 'Only 3 backup codes left' }).waitFor();
    await checkScreen(page, '11-account-few-codes');
  });

  test('regenerate backup codes with password and code: a new set, shown once', async () => {
    await button(page, 'Regenerate backup codes').click();
    await field(page, 'Password').fill(PASSWORD);
    await field(page, 'Code').fill(codes[7]);
    await checkScreen(page, '12-regenerate-form');
    await button(page, 'Regenerate codes').click();
    await heading(page).filter({ hasText: 'Save your backup codes' }).waitFor();
    assert.match(await page.locator('#codes-notice').textContent(), /earlier codes stopped working/);
    const fresh = await page.locator('#codes-list code').allTextContents();
    assert.equal(fresh.length, 10);
    assert.ok(!fresh.some((code) => codes.includes(code)));
    codes = fresh;
    await button(page, 'I have saved these codes').click();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.equal(await page.locator('#mfa-remaining').textContent(), '10');
    assert.ok(!(await page.locator('#mfa-codes-warning').isVisible()));
  });

  test('change password with the current one, a new one and a code', async () => {
    await button(page, 'Change password').click();
    await field(page, 'Current password').fill(PASSWORD);
    await field(page, 'New password').fill(NEW_PASSWORD);
    await field(page, 'Code').fill(codes[0]);
    await checkScreen(page, '13-change-password-form');
    await button(page, 'Save new password').click();
    await page.locator('#account-notice').filter({ hasText: 'Your password is changed' }).waitFor();
    assert.match(await page.locator('#account-notice').textContent(), /other sessions were signed out/);
    assert.equal(await page.locator('#mfa-remaining').textContent(), '9');
    const answer = await apiLogin(server.base, email, NEW_PASSWORD);
    assert.equal(answer.mfa_required, true);
  });

  test('disable MFA with password and code', async () => {
    await button(page, 'Disable two-factor authentication').click();
    await field(page, 'Password').fill(NEW_PASSWORD);
    let code;
    [code, lastStep] = await freshCode(secret, lastStep);
    await field(page, 'Code').fill(code);
    await checkScreen(page, '14-disable-form');
    await button(page, 'Disable').click();
    await page.locator('#account-notice').filter({ hasText: 'Two-factor authentication is off' }).waitFor();
    assert.equal(await page.locator('#mfa-status').textContent(), 'Off');
    assert.ok(await button(page, 'Set up two-factor authentication').isVisible());
    const answer = await apiLogin(server.base, email, NEW_PASSWORD);
    assert.equal(typeof answer.token, 'string', 'a password alone logs in again');
    await checkScreen(page, '15-account-mfa-disabled');
  });

  test('the sessions list shows every signed-in session, with a sign-out for the others', async () => {
    // One more session, from "a phone" whose user agent carries markup.
    const response = await fetch(`${server.base}/api/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'user-agent': '<b>Phone</b>' },
      body: JSON.stringify({ email, password: NEW_PASSWORD }),
    });
    const phone = (await response.json()).token;
    await page.reload();
    await page.locator('#sessions-card').waitFor();
    const rows = page.locator('#sessions-list li');
    const phoneRow = rows.filter({ hasText: '<b>Phone</b>' });
    assert.equal(await phoneRow.count(), 1, 'the user agent is shown as text, not markup');
    assert.equal(await rows.filter({ hasText: '(this browser)' }).count(), 1);
    const total = await rows.count();
    assert.ok(total >= 2, `${total} sessions listed`);
    assert.equal(
      await page.getByRole('button', { name: /^Sign out/ }).count(),
      total - 1,
      'no sign-out for the session in use',
    );
    await checkScreen(page, '16-account-sessions');
    await phoneRow.getByRole('button', { name: /^Sign out/ }).click();
    await page.locator('#account-notice').filter({ hasText: 'That session is signed out' }).waitFor();
    assert.equal(await rows.count(), total - 1);
    const check = await fetch(`${server.base}/api/auth/session`, { headers: { authorization: `Bearer ${phone}` } });
    assert.equal(check.status, 401, 'the phone is signed out on the server too');
  });
});

describe('a throttled log-in', () => {
  let browser;
  let server;

  before(async () => {
    browser = await launchChromium();
    // Two log-ins a minute per address: the third answers 429 with Retry-After.
    server = await startTessera({ TESSERA_IP_RATE_LIMIT_PER_MINUTE: '2' });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  test('a 429 shows a live countdown from Retry-After and disables the button until then', async () => {
    const page = await openPage(browser, server.base);
    await page.goto(server.base);
    await field(page, 'Email').fill('nobody@example.com');
    await field(page, 'Password').fill('not the password');
    const logIn = button(page, 'Log in');
    for (let attempt = 0; attempt < 2; attempt += 1) {
      await logIn.click();
      await page.locator('#login-form .form-error').filter({ hasText: 'Invalid email or password' }).waitFor();
      await page.locator('#login-form[aria-busy]').waitFor({ state: 'detached' });
    }
    await logIn.click();
    const countdown = page.locator('#login-form .countdown');
    await countdown.filter({ hasText: /try again in \d+ seconds/ }).waitFor();
    assert.ok(await logIn.isDisabled(), 'the button waits for Retry-After');
    const first = Number((await countdown.textContent()).match(/\d+/)[0]);
    assert.ok(first > 2 && first <= 60, `countdown starts at ${first}`);
    await page.waitForTimeout(2100);
    const later = Number((await countdown.textContent()).match(/\d+/)[0]);
    assert.ok(later <= first - 2, `countdown runs: ${first} then ${later}`);
    assert.ok(await logIn.isDisabled());
    assert.equal(await page.locator('#login-form .form-error').textContent(), 'Too many requests.');
    await checkScreen(page, '17-log-in-throttled');
  });
});

describe('a phone-sized screen, 360 px wide', () => {
  let browser;
  let server;

  before(async () => {
    browser = await launchChromium();
    server = await startTessera();
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
  });

  const fitsWidth = (page) => page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);

  test('every screen fits without sideways scrolling, in light and dark', async () => {
    const page = await openPage(browser, server.base, { viewport: { width: 360, height: 740 }, isMobile: true, hasTouch: true });
    await page.goto(server.base);
    await heading(page).filter({ hasText: 'Log in' }).waitFor();
    assert.ok(await fitsWidth(page), 'log-in fits');
    await checkScreen(page, '18-narrow-log-in');

    await page.getByRole('link', { name: 'Create an account' }).click();
    // Wait for the view to switch: until then the log-in form's Email field is the visible one,
    // and a fill aimed at it waits forever once it is hidden.
    await heading(page).filter({ hasText: 'Create account' }).waitFor();
    await field(page, 'Email').fill('narrow@example.com');
    await field(page, 'Password').fill(PASSWORD);
    await button(page, 'Create account').click();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.ok(await fitsWidth(page), 'account fits');
    await checkScreen(page, '19-narrow-account');

    await button(page, 'Set up two-factor authentication').click();
    await field(page, 'Password').fill(PASSWORD);
    await button(page, 'Continue').click();
    await page.getByRole('img', { name: /QR code/ }).waitFor();
    assert.ok(await fitsWidth(page), 'setup fits');
    await checkScreen(page, '20-narrow-setup');
    const secret = (await page.locator('#setup-secret').textContent()).replaceAll(' ', '');
    const [code] = await freshCode(secret, 0);
    await field(page, 'Code').fill(code);
    await button(page, 'Enable').click();
    await heading(page).filter({ hasText: 'Save your backup codes' }).waitFor();
    assert.ok(await fitsWidth(page), 'codes fit');
    await checkScreen(page, '21-narrow-backup-codes');

    await page.emulateMedia({ colorScheme: 'dark' });
    await button(page, 'I have saved these codes').click();
    await heading(page).filter({ hasText: 'Account security' }).waitFor();
    assert.ok(await fitsWidth(page), 'dark account fits');
    await checkScreen(page, '22-narrow-account-dark');
  });

  test('a browser that drops the Secure cookie (plain http, not loopback) is told why', async () => {
    await fetch(`${server.base}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'plain-http@example.com', password: PASSWORD }),
    });
    const page = await openPage(browser, server.base, { viewport: { width: 360, height: 740 } });
    // What a browser does with a Secure cookie over http from a public host: it never stores it.
    // (route.fetch shares the context's cookie jar, so the jar is emptied as well.)
    await page.route('**/api/auth/login', async (route) => {
      const response = await route.fetch();
      const headers = { ...response.headers() };
      delete headers['set-cookie'];
      await page.context().clearCookies();
      await route.fulfill({ response, headers });
    });
    await page.goto(server.base);
    await field(page, 'Email').fill('plain-http@example.com');
    await field(page, 'Password').fill(PASSWORD);
    await button(page, 'Log in').click();
    await page.locator('#login-form .form-error').filter({ hasText: 'did not keep the session cookie' }).waitFor();
    await heading(page).filter({ hasText: 'Log in' }).waitFor();
    assert.match(await page.locator('#login-form .form-error').textContent(), /https:\/\//);
  });
});
