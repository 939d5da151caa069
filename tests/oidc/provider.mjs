// A real OpenID provider (npm oidc-provider) for the single sign-on tests, on 127.0.0.1.
//
//   node tests/oidc/provider.mjs CONFIG.json CLIENTS_DIR
//
// CONFIG: {"clients": [{client_id, client_secret, redirect_uris}],
//          "accounts": {"<sub>": {"email", "name", "groups": [...], "disabled": false}}}
// Prints one line, {"issuer": "http://127.0.0.1:<port>"}, once it listens on a free port.
// The tests change an account while it runs: POST /test/accounts/<sub> with a JSON object
// merged into the account (new groups, "disabled": true). A disabled account cannot sign in
// and its refresh tokens and userinfo stop working, as an IdP's disabled user does.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// oidc-provider is a devDependency of clients/ (make clients); argv[3] is that directory.
const entry = join(process.argv[3], 'node_modules', 'oidc-provider', 'lib', 'index.js');
const { default: Provider } = await import(pathToFileURL(entry).href);

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts;

function page(title, body) {
  return `<!doctype html><html><head><title>${title}</title></head><body>${body}</body></html>`;
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => { data += chunk; });
    req.on('end', () => resolve(data));
    req.on('error', reject);
  });
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: config.clients.map((client) => ({
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      ...client,
    })),
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    features: { devInteractions: { enabled: false } },
    cookies: { keys: ['llmproxy-test-provider-cookie-key'] },
    async findAccount(_ctx, sub) {
      const account = accounts[sub];
      if (!account || account.disabled) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: account.email,
            email_verified: account.email_verified ?? true,
            name: account.name ?? sub,
            groups: account.groups ?? [],
          };
        },
      };
    },
    // Consent is given by the test accounts once and for all: every requested scope.
    async loadExistingGrant(ctx) {
      const grantId = ctx.oidc.result?.consent?.grantId
        || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const grant = await ctx.oidc.provider.Grant.find(grantId);
        if (grant) return grant;
      }
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope('openid offline_access email profile groups');
      await grant.save();
      return grant;
    },
    // Refresh tokens for the web client without prompt=consent (as an IdP's offline access).
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    expiresWithSession: async () => false,
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  });
  provider.proxy = false;
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, issuer);
      const control = url.pathname.match(/^\/test\/accounts\/([^/]+)$/);
      if (control && req.method === 'POST') {
        const sub = decodeURIComponent(control[1]);
        accounts[sub] = { ...(accounts[sub] || {}), ...JSON.parse(await readBody(req)) };
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(accounts[sub]));
        return;
      }
      const interaction = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
      if (interaction && req.method === 'GET' && !interaction[2]) {
        const details = await provider.interactionDetails(req, res);
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        res.end(page('Sign in', `<h1>Test IdP</h1>
          <form method="post" action="/interaction/${escape(details.uid)}/login">
          <input id="login" name="login" autocomplete="off">
          <button id="submit" type="submit">Sign in</button></form>`));
        return;
      }
      if (interaction && req.method === 'POST' && interaction[2]) {
        const login = new URLSearchParams(await readBody(req)).get('login') || '';
        const account = accounts[login];
        if (!account || account.disabled) {
          res.writeHead(403, { 'content-type': 'text/html; charset=utf-8' });
          res.end(page('Refused', `<p id="refused">Account ${escape(login)} is disabled.</p>`));
          return;
        }
        await provider.interactionFinished(req, res, { login: { accountId: login } }, {
          mergeWithLastSubmission: false,
        });
        return;
      }
      callback(req, res);
    } catch (error) {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(error));
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
