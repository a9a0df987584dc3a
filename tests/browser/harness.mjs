// What the browser suite stands on: a served tessera (the debug binary on a free loopback
// port with a fresh data directory), Debian's chromium through playwright-core, a TOTP
// generator independent of tessera, axe-core, and screenshots under output/.

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

export const OUTPUT = join(here, 'output');
export const BINARY = process.env.TESSERA_BIN || resolve(here, '../../target/debug/tessera');
export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// ---- TOTP (RFC 4226 / RFC 6238) with node's HMAC-SHA1, independent of tessera ----

export function base32Decode(text) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out = [];
  for (const char of text.replace(/[\s=]/g, '').toUpperCase()) {
    const index = alphabet.indexOf(char);
    if (index < 0) throw new Error(`not base32: ${char}`);
    value = (value << 5) | index;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((value >>> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

export function hotp(key, counter, digits = 6) {
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const digest = createHmac('sha1', key).update(message).digest();
  const offset = digest[digest.length - 1] & 0x0f;
  const number = digest.readUInt32BE(offset) & 0x7fffffff;
  return String(number % 10 ** digits).padStart(digits, '0');
}

export const step = (unixSeconds) => Math.floor(unixSeconds / 30);
export const nowSeconds = () => Date.now() / 1000;

/** The code of a base32 secret for the 30-second step `counter`. */
export const totp = (secret, counter) => hotp(base32Decode(secret), counter);

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/**
 * Tessera accepts each step once (replay protection), so a second code needs a later step than
 * the last one used: wait for it. Returns [code, step].
 */
export async function freshCode(secret, lastStep) {
  while (step(nowSeconds()) <= lastStep) {
    await sleep((30 - (nowSeconds() % 30)) * 1000 + 50);
  }
  const current = step(nowSeconds());
  return [totp(secret, current), current];
}

// ---- a served tessera ----

async function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

/** Starts `tessera serve` and waits until `/healthz` answers. */
export async function startTessera(env = {}) {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`cargo build\` first`);
  const dataDir = mkdtempSync(join(tmpdir(), 'tessera-browser-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(BINARY, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', join(dataDir, 'data')], {
    env: { ...process.env, TESSERA_LOG: 'warn', TESSERA_IP_RATE_LIMIT_PER_MINUTE: '0', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const exited = new Promise((done) => child.once('exit', done));
  for (let attempt = 0; attempt < 200; attempt += 1) {
    if (child.exitCode !== null) throw new Error(`tessera exited with ${child.exitCode}`);
    try {
      if ((await fetch(`${base}/healthz`)).ok) {
        return {
          base,
          async stop() {
            child.kill('SIGTERM');
            await exited;
            rmSync(dataDir, { recursive: true, force: true });
          },
        };
      }
    } catch {
      // not listening yet
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error('tessera did not become healthy');
}

// ---- the browser ----

export async function launchChromium() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: apt-get install chromium`);
  // launch() gives every run a fresh temporary profile (--user-data-dir) of its own.
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
      '--disable-sync',
      '--disable-quic',
    ],
  });
}

/** A page that records CSP violations and script errors, which every test asserts are none. */
export async function openPage(browser, base, options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await context.newPage();
  page.problems = [];
  page.requestedUrls = [];
  page.on('request', (request) => page.requestedUrls.push(request.url()));
  page.on('pageerror', (error) => page.problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    const text = message.text();
    if (/Content Security Policy|Refused to/i.test(text)) page.problems.push(`CSP: ${text}`);
  });
  return page;
}

// ---- axe-core and screenshots ----

const axeSource = readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8');

/** Serious and critical axe violations of the page as it is now. */
export async function seriousViolations(page) {
  // Evaluated through the DevTools protocol, so the page's CSP (no inline script) does not apply.
  await page.evaluate(axeSource);
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  return result.violations
    .filter((violation) => ['serious', 'critical'].includes(violation.impact))
    .map((violation) => `${violation.id}: ${violation.help} (${violation.nodes.map((node) => node.target.join(' ')).join(', ')})`);
}

export async function screenshot(page, name) {
  mkdirSync(OUTPUT, { recursive: true });
  await page.screenshot({ path: join(OUTPUT, `${name}.png`), fullPage: true });
}
