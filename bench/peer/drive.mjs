// The client of bench/peer.sh: the same requests, connections and timing for Tessera and for
// better-auth, so that the two can be read side by side.
//   node drive.mjs TESSERA_URL PEER_URL USERS REQUESTS CONNECTIONS
// For each system: registers USERS accounts with TOTP enabled (through its HTTP API), then
// measures (1) the session check (Tessera `GET /api/auth/session` with the bearer token,
// better-auth `GET /api/auth/get-session` with its session cookie), REQUESTS requests over
// CONNECTIONS keep-alive connections, and (2) the second login step with a right TOTP code,
// once per user, after every user's password step (not timed) is done. TOTP codes come from
// this file's own RFC 6238 code. Prints one table and the ratios; exits non-zero on any
// unexpected status.
import http from "node:http";
import crypto from "node:crypto";

const [tesseraUrl, peerUrl, usersArg, requestsArg, connectionsArg] = process.argv.slice(2);
const USERS = Number(usersArg ?? 300);
const REQUESTS = Number(requestsArg ?? 20000);
const CONNECTIONS = Number(connectionsArg ?? 64);
const PASSWORD = "Quartz-Meadow-Lantern-4821";
const progress = process.stderr.isTTY ? (line) => process.stderr.write(`\r${line}\x1b[K`) : () => {};

function fail(message) {
  process.stderr.write(`\npeer: ${message}\n`);
  process.exit(1);
}

function call(agent, base, method, path, { body, headers = {} } = {}) {
  const url = new URL(path, base);
  const data = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method,
        agent,
        headers: {
          origin: base,
          ...(data === undefined ? {} : { "content-type": "application/json", "content-length": Buffer.byteLength(data) }),
          ...headers,
        },
      },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString();
          let json = null;
          try {
            json = text ? JSON.parse(text) : null;
          } catch {}
          resolve({ status: res.statusCode, headers: res.headers, json, text });
        });
      },
    );
    req.on("error", reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

function expect(response, status, what) {
  if (response.status !== status) fail(`${what}: ${response.status} ${response.text.slice(0, 200)}`);
  return response;
}

// Cookies as "name=value; ..." from Set-Cookie headers, merged into `jar`.
function keepCookies(jar, response) {
  for (const line of response.headers["set-cookie"] ?? []) {
    const [pair] = line.split(";");
    const at = pair.indexOf("=");
    jar.set(pair.slice(0, at), pair.slice(at + 1));
  }
  return [...jar].map(([name, value]) => `${name}=${value}`).join("; ");
}

function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  let bits = 0;
  let value = 0;
  const out = [];
  for (const char of text.replace(/=+$/, "").toUpperCase()) {
    value = (value << 5) | alphabet.indexOf(char);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

// RFC 6238 with SHA-1, 6 digits, 30 s: the code of the current step.
function totp(key) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(Date.now() / 1000 / 30)));
  const mac = crypto.createHmac("sha1", key).update(counter).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const number = (mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000;
  return String(number).padStart(6, "0");
}

async function pool(count, work) {
  let next = 0;
  const workers = Array.from({ length: CONNECTIONS }, async () => {
    while (next < count) {
      const index = next++;
      await work(index);
    }
  });
  await Promise.all(workers);
}

function summary(latencies, seconds) {
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
  return { rate: latencies.length / seconds, p50: at(0.5), p99: at(0.99) };
}

async function timed(count, request) {
  const latencies = [];
  const started = performance.now();
  await pool(count, async (index) => {
    const t = performance.now();
    await request(index);
    latencies.push(performance.now() - t);
    if (latencies.length % 500 === 0) progress(`  ${latencies.length}/${count}`);
  });
  progress("");
  return summary(latencies, (performance.now() - started) / 1000);
}

// The next TOTP step: a code used to enable MFA may not be used again (Tessera's replay rule).
async function freshStep() {
  const wait = 30_000 - (Date.now() % 30_000) + 200;
  progress(`  waiting ${(wait / 1000).toFixed(0)} s for a fresh TOTP step`);
  await new Promise((resolve) => setTimeout(resolve, wait));
}

const systems = {
  tessera: {
    base: tesseraUrl,
    async seed(agent, i) {
      const email = `peer${i}@example.com`;
      const credentials = { email, password: PASSWORD };
      expect(await call(agent, this.base, "POST", "/api/auth/register", { body: credentials }), 201, "tessera register");
      const login = expect(await call(agent, this.base, "POST", "/api/auth/login", { body: credentials }), 200, "tessera login");
      const auth = { authorization: `Bearer ${login.json.token}` };
      const setup = expect(
        await call(agent, this.base, "POST", "/api/user/profile/mfa/setup", { body: { password: PASSWORD }, headers: auth }),
        200,
        "tessera mfa setup",
      );
      const key = base32(setup.json.secret);
      expect(
        await call(agent, this.base, "POST", "/api/user/profile/mfa/verify", { body: { code: totp(key) }, headers: auth }),
        200,
        "tessera mfa verify",
      );
      return { email, key, session: auth };
    },
    check(agent, user) {
      return call(agent, this.base, "GET", "/api/auth/session", { headers: user.session });
    },
    async passwordStep(agent, user) {
      const login = expect(
        await call(agent, this.base, "POST", "/api/auth/login", { body: { email: user.email, password: PASSWORD } }),
        200,
        "tessera password step",
      );
      if (!login.json.mfa_token) fail("tessera: no mfa_token");
      return login.json.mfa_token;
    },
    secondStep(agent, user, pending) {
      return call(agent, this.base, "POST", "/api/auth/login/mfa", { body: { mfa_token: pending, code: totp(user.key) } });
    },
  },
  "better-auth": {
    base: peerUrl,
    async seed(agent, i) {
      const email = `peer${i}@example.com`;
      const jar = new Map();
      const signUp = expect(
        await call(agent, this.base, "POST", "/api/auth/sign-up/email", { body: { email, password: PASSWORD, name: `peer ${i}` } }),
        200,
        "better-auth sign-up",
      );
      let cookie = keepCookies(jar, signUp);
      const enable = expect(
        await call(agent, this.base, "POST", "/api/auth/two-factor/enable", { body: { password: PASSWORD }, headers: { cookie } }),
        200,
        "better-auth two-factor enable",
      );
      cookie = keepCookies(jar, enable);
      const key = base32(new URL(enable.json.totpURI).searchParams.get("secret"));
      return { email, key, session: { cookie } };
    },
    check(agent, user) {
      return call(agent, this.base, "GET", "/api/auth/get-session", { headers: user.session });
    },
    async passwordStep(agent, user) {
      const jar = new Map();
      const signIn = expect(
        await call(agent, this.base, "POST", "/api/auth/sign-in/email", { body: { email: user.email, password: PASSWORD } }),
        200,
        "better-auth sign-in",
      );
      if (!signIn.json?.twoFactorRedirect) fail("better-auth: sign-in did not ask for the second factor");
      return keepCookies(jar, signIn);
    },
    secondStep(agent, user, pending) {
      return call(agent, this.base, "POST", "/api/auth/two-factor/verify-totp", {
        body: { code: totp(user.key) },
        headers: { cookie: pending },
      });
    },
  },
};

const results = {};
for (const [name, system] of Object.entries(systems)) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONNECTIONS });
  process.stderr.write(`${name}: registering ${USERS} users with TOTP...\n`);
  const users = new Array(USERS);
  await pool(USERS, async (i) => {
    users[i] = await system.seed(agent, i);
  });
  process.stderr.write(`${name}: ${REQUESTS} session checks over ${CONNECTIONS} connections...\n`);
  const check = await timed(REQUESTS, async (i) => {
    const response = await system.check(agent, users[i % USERS]);
    if (response.status !== 200 || !response.json) fail(`${name} session check: ${response.status} ${response.text.slice(0, 200)}`);
  });
  process.stderr.write(`${name}: ${USERS} password steps (not timed)...\n`);
  const pending = new Array(USERS);
  await pool(USERS, async (i) => {
    pending[i] = await system.passwordStep(agent, users[i]);
  });
  await freshStep();
  process.stderr.write(`${name}: ${USERS} second steps with a right TOTP code...\n`);
  const second = await timed(USERS, async (i) => {
    expect(await system.secondStep(agent, users[i], pending[i]), 200, `${name} second step`);
  });
  results[name] = { check, second };
  agent.destroy();
}

const t = results.tessera;
const b = results["better-auth"];
const row = (label, r) => `| ${label} | ${r.rate.toFixed(0)} | ${r.p50.toFixed(2)} | ${r.p99.toFixed(2)} |`;
console.log(`\n${USERS} users with TOTP each, ${CONNECTIONS} keep-alive connections, one Node client for both\n`);
console.log("| workload | requests/s | p50 ms | p99 ms |");
console.log("|---|---|---|---|");
console.log(row("Tessera: session introspection", t.check));
console.log(row("better-auth: get-session", b.check));
console.log(row("Tessera: second login step (TOTP)", t.second));
console.log(row("better-auth: verify-totp", b.second));
console.log(
  `\nsession check: Tessera ${(t.check.rate / b.check.rate).toFixed(1)} x better-auth's rate, p99 ${(t.check.p99 / b.check.p99).toFixed(2)} x`,
);
console.log(
  `second step: Tessera ${(t.second.rate / b.second.rate).toFixed(1)} x better-auth's rate, p99 ${(t.second.p99 / b.second.p99).toFixed(2)} x`,
);
