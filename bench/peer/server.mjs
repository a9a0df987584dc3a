// better-auth 1.7 on PostgreSQL, one Node process: the peer of bench/peer.sh.
//   node server.mjs PORT DATABASE_URL
// Email and password sign-in with the two-factor plugin (TOTP), sessions in the database (no
// cookie cache: every get-session reads it, as Tessera's introspection does), rate limits off
// (the load comes from one address, as in Tessera's harness).
import http from "node:http";
import pg from "pg";
import { betterAuth } from "better-auth";
import { twoFactor } from "better-auth/plugins";
import { toNodeHandler } from "better-auth/node";
import { getMigrations } from "better-auth/db/migration";

const [port, databaseUrl] = process.argv.slice(2);
if (!port || !databaseUrl) {
  console.error("usage: node server.mjs PORT DATABASE_URL");
  process.exit(2);
}
const baseURL = `http://127.0.0.1:${port}`;
const auth = betterAuth({
  baseURL,
  secret: "peer-benchmark-secret-peer-benchmark-secret",
  database: new pg.Pool({ connectionString: databaseUrl, max: 10 }),
  emailAndPassword: { enabled: true },
  rateLimit: { enabled: false },
  trustedOrigins: [baseURL],
  plugins: [twoFactor({ issuer: "peer", skipVerificationOnEnable: true })],
  logger: { level: "error" },
});
const { runMigrations } = await getMigrations(auth.options);
await runMigrations();
http.createServer(toNodeHandler(auth)).listen(Number(port), "127.0.0.1", () => {
  console.log(`ready ${baseURL}`);
});
